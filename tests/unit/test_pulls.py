"""Images are had before the plan that runs: ``plan_after_pulls`` holds every service
still planned to pull, so the executor is never handed a pull (it has no pull step)."""

from __future__ import annotations

from dataclasses import replace

from support import desired, service, with_images

from reconciler.model import ObservedHost, ObservedState
from reconciler.plan.actions import PullImage, StartContainer
from reconciler.plan.planner import plan
from reconciler.plan.pulls import plan_after_pulls


def test_a_failed_pull_holds_every_service_that_needs_the_image_there() -> None:
    # web and api run the same image on h1; the first plan pulls it once (for api).
    d = desired(service("web"), service("api"))
    first = plan(d, ObservedState())
    pulls = [a for a in first.actions if isinstance(a, PullImage)]
    assert [(a.service, a.image) for a in pulls] == [("api", "app:v1")]
    why = "host h1: cannot pull app:v1: no such registry"
    after, holds = plan_after_pulls(d, ObservedState(), {}, {("h1", "app:v1"): why})
    assert holds == {"api": why, "web": why}  # web's pull was never its own
    assert not any(isinstance(a, PullImage) for a in after.actions)
    assert not any(isinstance(a, StartContainer) for a in after.actions)
    assert set(after.notes) == {f"service api held: {why}", f"service web held: {why}"}


def test_pulled_images_plan_starts_and_hold_nothing() -> None:
    d = desired(service("web"), service("api"), service("db", [("v2", 100)]))
    world = with_images(ObservedState(), d)
    after, holds = plan_after_pulls(d, world, {}, {})
    assert holds == {}
    assert after == plan(d, world)
    assert not any(isinstance(a, PullImage) for a in after.actions)


def test_an_image_gone_after_its_pull_holds_its_service_only() -> None:
    d = desired(service("web"), service("db", [("v2", 100)]))
    world = with_images(ObservedState(), d)
    host = world.host("h1")
    gone = replace(world, hosts=(ObservedHost("h1", host.containers,
                                              tuple(i for i in host.images if i[0] != "app:v2")),))
    after, holds = plan_after_pulls(d, gone, {"old": "failed before"}, {})
    assert holds == {"db": "host h1: image app:v2 is not there after it was pulled"}
    assert {a.service for a in after.actions if isinstance(a, StartContainer)} == {"web"}
