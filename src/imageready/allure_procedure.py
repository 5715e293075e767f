"""An action case's Allure page reads as the procedure.

allure-pytest shows each chained action fixture (lease, guest_generalized, deallocated, ...) as
a "Set up" entry, in no particular order, and pytest's post-finalizer of every fixture as a
``<fixture>::<lambda>`` tear-down of unknown status. Here the steps a case's set-up went through
become the case's own steps, in the order they ran, each with its status, detail and evidence
(the step's record and logs); the fixtures' set-up entries are dropped and pytest's post-finalizer
is not shown.

This leans on allure-pytest 2.x internals (its listener's fixture cache, the wrapper it puts
around finalizers); tests/reports covers them.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from imageready.redact import one_line, redact

if TYPE_CHECKING:
    from imageready.steps import StepRecord

#: an action step's status (imageready.steps.StepRecord) -> the Allure status of its step
STEP_STATUSES = {
    "done": "passed",
    "already done": "passed",
    "planned": "skipped",
    "skipped": "skipped",
    "failed": "failed",
    "interrupted": "broken",
    "running": "broken",
}
#: the fixtures that run action steps; their Allure "Set up" entries become the case's steps
ACTION_FIXTURES_MODULE = "imageready.action_fixtures"
#: pytest (8.x, 9.x) registers this lambda as every fixture's first finalizer, to call
#: pytest_fixture_post_finalizer; allure-pytest (2.x) wraps it like a tear-down of the fixture
#: and shows it as "<fixture>::<lambda>" with no status (the hook it calls closes the container)
_PYTEST_POST_FINALIZER = "FixtureDef.execute.<locals>.<lambda>"


@dataclass
class _Shown:
    """One step of an action case's page: the step's record, and the Allure set-up entries
    (befores) of the fixture that ran it, whose own steps and attachments it keeps."""

    record: StepRecord | None
    befores: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class _Times:
    """When a step ran (ms since the epoch, Allure's unit), kept for the later pages showing it."""

    start: int | None
    stop: int | None


PROCEDURE = pytest.StashKey[list[_Shown]]()
TIMES = pytest.StashKey[dict[tuple[str, str, str, str], _Times]]()


def show_step(item: pytest.Item, record: StepRecord) -> None:
    """Show action step ``record`` on the Allure page of case ``item``, after the steps its
    set-up went through before it (each action fixture calls this, done or failed)."""
    item.stash.setdefault(PROCEDURE, []).append(_Shown(record))


def tidy_fixture(fixturedef: pytest.FixtureDef[Any], item: pytest.Item, shown_before: int) -> None:
    listener: Any = item.config.pluginmanager.get_plugin("allure_listener")
    if listener is None:
        return
    finalizers: list[Any] = getattr(fixturedef, "_finalizers", [])
    for index, finalizer in enumerate(finalizers):
        wrapped = getattr(finalizer, "_fixture_function", None)  # allure_commons' fixture wrapper
        if wrapped is None:
            continue
        if getattr(wrapped, "__qualname__", "") == _PYTEST_POST_FINALIZER:
            finalizers[index] = wrapped  # pytest's bookkeeping, not a tear-down: not shown
        elif not hasattr(wrapped, "__name__"):
            finalizer._name = f"{fixturedef.argname} (tear-down)"  # a yield fixture's, not "name::1"
    if getattr(fixturedef.func, "__module__", None) != ACTION_FIXTURES_MODULE:
        return
    container = listener.allure_logger.get_item(listener._cache.get(fixturedef))
    if container is None or not container.befores:
        return
    before = container.befores.pop()  # this set-up's entry: it becomes a step of the case
    shown = item.stash.setdefault(PROCEDURE, [])
    ran_here = shown[shown_before:]
    if ran_here:
        ran_here[-1].befores.append(before)
    else:
        shown.append(_Shown(None, [before]))


def procedure(item: pytest.Item) -> list[Any]:
    """The case's steps for what its set-up did, in the order it happened."""
    steps = []
    for shown in item.stash.get(PROCEDURE, []):
        if shown.record is not None:
            steps.append(_step_result(item.config, shown.record, shown.befores))
        else:
            # a fixture that ran no step (vm_actions): shown only when it failed or recorded
            steps += [_as_step(b) for b in shown.befores if b.steps or b.attachments or b.status != "passed"]
    return steps


def _step_result(config: pytest.Config, record: StepRecord, befores: list[Any]) -> Any:
    import allure_commons.model2

    model2: Any = allure_commons.model2
    times = _times(config, record, befores)
    status = STEP_STATUSES.get(record.status, "broken")
    step = model2.TestStepResult(
        name=f"{record.step}: {record.status}",
        status=status,
        start=times.start,
        stop=times.stop,
        parameters=[model2.Parameter(name="detail", value=record.detail)],
        attachments=_evidence(record),
    )
    if status != "passed":
        step.statusDetails = model2.StatusDetails(message=record.detail)
    for before in befores:  # whatever the fixture itself recorded while it ran the step
        step.steps += before.steps
        step.attachments += before.attachments
    return step


def _as_step(before: Any) -> Any:
    import allure_commons.model2

    model2: Any = allure_commons.model2
    return model2.TestStepResult(
        name=before.name,
        status=before.status,
        statusDetails=before.statusDetails,
        start=before.start,
        stop=before.stop,
        steps=before.steps,
        attachments=before.attachments,
    )


def _times(config: pytest.Config, record: StepRecord, befores: list[Any]) -> _Times:
    """When the step ran: the first page to show a step is the case whose set-up ran it (its
    fixture's set-up times, to the ms); later cases only read the record, and reuse those."""
    known = config.stash.setdefault(TIMES, {})
    key = (record.vm, record.step, record.run_id, record.started)
    if key not in known:
        if befores:
            known[key] = _Times(befores[0].start, befores[0].stop)
        else:
            known[key] = _Times(_ms(record.started), _ms(record.ended))
    return known[key]


def _evidence(record: StepRecord) -> list[Any]:
    """The step's record (status, times, Azure requests, evidence) and its logs, as attachments
    of this page (Allure 3 shows a file on one page only: each page gets its copy)."""
    import allure_commons

    commons: Any = allure_commons
    files = [(f"{record.step} record", "application/json", "json", _record_json(record))]
    files += [(name, "text/plain", "txt", text) for name, text in record.attachments.items()]
    attachments = []
    for name, mime, extension, text in files:
        source = f"{uuid.uuid4()}-attachment.{extension}"
        commons.plugin_manager.hook.report_attached_data(body=redact(text), file_name=source)
        title = one_line(name, limit=120)
        attachments.append(commons.model2.Attachment(name=title, source=source, type=mime))
    return attachments


def _record_json(record: StepRecord) -> str:
    return json.dumps(record.as_dict(), indent=2, sort_keys=True, default=str)


def _ms(stamp: str) -> int | None:
    try:
        return int(dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None
