"""Names in HAProxy's config are made and read back in one place (reconciler.identity):
each parse function is the inverse of its name function, and total on other text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import identity
from reconciler.lb.haproxy.installed import parse_config_header

# The schema's name pattern (hosts, services): no dot, no space.
NAME = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?", fullmatch=True)
CONTAINER = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,60}", fullmatch=True)


@given(host=NAME, container=CONTAINER)
def test_server_names_read_back_as_host_and_container(host: str, container: str) -> None:
    server = identity.server_name(host, container)
    assert identity.parse_server_name(server) == (host, container)
    assert identity.server_host(server) == host


def test_a_real_container_name_reads_back() -> None:
    name = identity.container_name("staging", "web", "v1.2", "0123456789abcdef", 0, "blue")
    assert identity.parse_server_name(identity.server_name("app2", name)) == ("app2", name)


def test_a_server_name_the_reconciler_did_not_make_never_raises() -> None:
    assert identity.parse_server_name("web1") == ("web1", "")
    assert identity.parse_server_name("") == ("", "")


@given(service=NAME)
def test_backend_names_read_back_as_the_service(service: str) -> None:
    assert identity.parse_backend_name(identity.backend_name(service)) == service


def test_a_foreign_backend_name_is_returned_as_it_is() -> None:
    assert identity.parse_backend_name("stats") == "stats"
    assert identity.parse_backend_name("be_") == ""


@given(
    section=st.lists(st.from_regex(r"[a-z_]{1,10}", fullmatch=True), min_size=1, max_size=3)
    .map(" ".join),
    digest=st.from_regex(r"[0-9a-f]{1,16}", fullmatch=True),
)
def test_section_markers_read_back(section: str, digest: str) -> None:
    line = identity.section_marker(section, digest)
    assert line.startswith(identity.SECTION_MARKER + " ")
    assert identity.parse_section_marker(line) == (section, digest)
    # and as a config header (what the renderer writes, the observer reads)
    assert parse_config_header(line + "\nglobal\n") == ((section, digest),)


@pytest.mark.parametrize("line", ["# other comment", "#reconciler-section global x", "", "global"])
def test_lines_that_are_no_marker_are_none(line: str) -> None:
    assert identity.parse_section_marker(line) is None


@pytest.mark.parametrize("line", ["# reconciler-section", "# reconciler-section global"])
def test_a_marker_without_name_or_digest_raises(line: str) -> None:
    with pytest.raises(ValueError, match="expected name and digest"):
        identity.parse_section_marker(line)
