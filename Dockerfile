# The reconciler as a container image. It runs `reconcile watch` by default; any other
# command is given as arguments (`docker run IMAGE plan --repo /repo --env staging`).
#
# Build (tests/integration/test_dockerfile.py does the same three steps):
#   .ci/base-image      # once per machine, as root: makes reconciler-base:bookworm
#   python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
#       print(*p["build-system"]["requires"], "wheel", *p["project"]["dependencies"], \
#       sep="\n")' >build/requirements.txt
#   python3 -m pip download --dest build/wheels --only-binary=:all: -r build/requirements.txt
#   docker build -t reconciler .
# (The plain `pip download` fits when the host runs CPython 3.11 on glibc <= 2.36, as on
# Debian 12; elsewhere add the image's tags as the test does: --implementation cp
# --python-version 3.11 --platform manylinux_2_36_x86_64 --platform manylinux_2_35_x86_64
# ... --platform manylinux2014_x86_64.)
#
# Base image: no registry is reachable where this project is built and tested, so the
# base is a build argument. .ci/base-image makes one locally (debootstrap, Debian 12
# minbase + python3, python3-venv, git, haproxy, ca-certificates, openssh-client). Any
# Debian 12 image with those packages will do (--build-arg BASE=...).
#
# Python packages are installed offline (--no-index) from wheels downloaded on the host
# into build/wheels (in the build context; build/ is git-ignored). Checked where this
# project is built: build containers reach PyPI only through a TLS-intercepting egress
# proxy whose CA the host trusts and the image does not ("certificate verify failed"),
# and baking a site's CA into the image is not the fix. Offline installs are also
# repeatable, need no network in `docker build`, and keep rebuilds fast: the dependency
# layer is reused until the wheels change, so a code change rebuilds in ~10 s.
#
# Run (watch; the embedded HAProxy runs inside this container):
#   docker run -d --name reconciler --init --network host --user root \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     -v reconciler-state:/var/lib/reconciler \
#     -v /srv/manifests:/repo:ro \
#     -v /etc/reconciler/secrets:/etc/reconciler/secrets:ro \
#     reconciler watch --repo /repo --env production
# What needs what:
#   - The Docker socket: the default user (reconciler, uid 10001) can use it only with the
#     socket's group (--group-add "$(stat -c %g /var/run/docker.sock)") or as root
#     (--user root). Either way this is root-equivalent on the host: whoever drives the
#     engine can start privileged containers. `plan` and `status` need the socket too;
#     `validate` and `diff` read git only and need neither the socket nor root.
#   - `watch` and `apply` start the embedded HAProxy: run them as root (--user root, no
#     --group-add). HAProxy's master stays root (it binds the ports and owns the sockets);
#     its workers, which parse client traffic, run as user haproxy with no supplementary
#     group, chrooted to an empty folder. A non-root user holding the socket's group is
#     refused to start HAProxy: HAProxy would inherit that group (only root can shed
#     groups), and a parser bug would drive the Docker engine.
#   - --network host: the reconciler probes containers on the ports they publish on the
#     host address and the embedded HAProxy binds the host's addresses (127.0.0.1:8080 in
#     sample-repo). Not needed for `plan`, `status` (socket only), `validate`, `diff`.
#   - HAProxy binding privileged ports (< 1024, e.g. :80 / :443) on the host network: the
#     master binds them as root (--user root, as above) before its workers drop to
#     haproxy.
#   - --init: a PID 1 that forwards signals and reaps processes (the embedded HAProxy's
#     master is a daemon that becomes a child of PID 1 when its parent exits).
#   - /var/lib/reconciler (RECONCILE_STATE_DIR): HAProxy files, locks and history; keep it
#     on a volume. It belongs to uid 10001; with --user root any owner works.
#   - The manifests repository may be owned by any user and mounted read-only. It is
#     never trusted: git runs in it only as upload-pack (declared safe for its exact path,
#     for that call alone), to fetch it into the reconciler's own mirror under
#     ~/.cache/reconciler, and its .git/config, hooks and index are never used (no
#     safe.directory '*' here: see docs/security-git-haproxy.md).
#     A git URL over SSH needs a key and known_hosts in ~/.ssh (/home/reconciler/.ssh, or
#     /root/.ssh with --user root; mount them read-only).

ARG BASE=reconciler-base:bookworm
FROM ${BASE}

# Fail early, and say why, when the base lacks what the image needs.
RUN set -eu; \
    for c in python3 git haproxy ssh; do \
        command -v "$c" >/dev/null || { echo "base image lacks $c (see .ci/base-image)" >&2; exit 1; }; \
    done; \
    python3 -c 'import ensurepip, venv' \
        || { echo "base image lacks python3-venv (see .ci/base-image)" >&2; exit 1; }; \
    id -u haproxy >/dev/null \
        || { echo "base image lacks the haproxy user (Debian's haproxy package)" >&2; exit 1; }

ENV VIRTUAL_ENV=/opt/reconciler \
    PATH=/opt/reconciler/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Dependencies first: this layer is reused as long as build/wheels does not change.
COPY build/wheels/ /tmp/wheels/
RUN python3 -m venv /opt/reconciler \
    && /opt/reconciler/bin/pip install -q --no-index --find-links /tmp/wheels /tmp/wheels/*.whl

# The package itself, non-editable. reconciler/schemas is a symlink to ../schemas: both
# are copied so the link resolves during the build, and the wheel gets real copies of the
# schema files (package-data), which the test checks with `reconcile validate`.
COPY pyproject.toml README.md /src/
COPY schemas/ /src/schemas/
COPY reconciler/ /src/reconciler/
RUN /opt/reconciler/bin/pip install -q --no-index --find-links /tmp/wheels /src \
    && rm -rf /src /tmp/wheels \
    && test -f /opt/reconciler/lib/python3*/site-packages/reconciler/schemas/service.schema.json \
    && reconcile --version

# No safe.directory '*': a mounted repository owned by another uid is read through the
# reconciler's own mirror (reconciler/desired/mirror.py), never trusted as a whole.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/reconciler \
        --shell /usr/sbin/nologin reconciler \
    && install -d -o reconciler -g reconciler -m 0750 /var/lib/reconciler

ENV RECONCILE_STATE_DIR=/var/lib/reconciler
USER reconciler
WORKDIR /home/reconciler
ENTRYPOINT ["reconcile"]
CMD ["watch"]
