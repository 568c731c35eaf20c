"""The status page: a read-only web page over what the reconciler observed and recorded
(``data``: the JSON it serves; ``app``: the bottle routes and security headers;
``server``: waitress, in a thread beside ``reconcile watch`` or for ``reconcile ui``)."""
