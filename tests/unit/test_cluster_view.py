"""What `status` says of how an environment is driven (reconciler.present.cluster)."""

from __future__ import annotations

from reconciler.present.cluster import ClusterView, cluster_data, cluster_lines


def test_ssh_mode_says_nothing_more() -> None:
    assert cluster_lines(None) == []
    assert cluster_data(None) == {"mode": "ssh"}


def test_etcd_mode_names_the_leader_its_last_commit_and_what_it_holds() -> None:
    view = ClusterView("etcd", "m1-42-ab", applied="0123456789ab",
                       held={"web": "container x is not healthy"})
    assert cluster_lines(view) == [
        "mode etcd: leader is m1-42-ab, its last commit 0123456",
        "HELD by the leader at 0123456: web: container x is not healthy",
    ]
    assert cluster_data(view) == {
        "mode": "etcd", "leader": "m1-42-ab",
        "applied": {"commit": "0123456789ab", "held": {"web": "container x is not healthy"}}}


def test_etcd_mode_before_any_pass_and_without_a_leader() -> None:
    assert cluster_lines(ClusterView("etcd", "m1")) == ["mode etcd: leader is m1"]
    assert cluster_lines(ClusterView("etcd"))[0].startswith("mode etcd: NO LEADER")
    assert cluster_lines(ClusterView("etcd", error="etcd unavailable")) == [
        "mode etcd: leader unknown (etcd unavailable)"]
