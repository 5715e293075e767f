"""The steps Azure carries out on the VM, not its guest: deallocate, mark generalized, verify.

Deallocate and generalize first wait until no power operation of an earlier (killed) run is under
way (``settled_statuses``, which the sysprep step uses too) and are "already done" when Azure shows
their post-condition; verify reads OSState back from the instance view. Generalize is preceded by
the last write to the VM (``VmActions.write_final_lease``).
"""

from __future__ import annotations

import time

from imageready import progress
from imageready.azure_errors import AzureError
from imageready.steps.records import Outcome, StepFailed
from imageready.steps.vm_actions import VmActions

#: power states of an operation under way (Azure refuses another operation until it ends)
TRANSITIONAL = ("starting", "stopping", "deallocating")
SETTLE_POLL_SECONDS = 1.0


def settled_statuses(actions: VmActions) -> dict[str, str]:
    """The instance view once no power operation is under way. A run killed mid-operation
    leaves it running in Azure, which refuses another until it ends: wait for it."""
    state = actions.statuses()
    if state.get("PowerState") not in TRANSITIONAL or not actions.options.apply:
        return state
    deadline = float(getattr(actions.provider.azure(actions.vm), "lro_deadline", 1800.0))
    ticker = progress.Ticker(f"{actions.vm.key}: an earlier operation is under way", deadline=deadline)
    while state.get("PowerState") in TRANSITIONAL:
        if ticker.elapsed > deadline:
            raise StepFailed(
                f"{actions.vm.key} stayed PowerState/{state.get('PowerState')} for {deadline:.0f} s"
            )
        ticker.tick(f"PowerState/{state.get('PowerState')}")
        time.sleep(SETTLE_POLL_SECONDS)
        state = actions.statuses()
    return state


def deallocate(actions: VmActions) -> Outcome:
    state = settled_statuses(actions)
    if state.get("PowerState") == "deallocated":
        return Outcome("already done", "PowerState/deallocated")
    if not actions.options.apply:
        return Outcome("planned", f"would deallocate {actions.vm.key} (now {state.get('PowerState')})")
    actions.renew_lease()
    actions.provider.drop_guest(actions.vm)
    actions.provider.azure(actions.vm).deallocate(actions.vm)
    after = actions.statuses().get("PowerState")
    if after != "deallocated":
        raise StepFailed(f"{actions.vm.key} is {after} after deallocate, not deallocated")
    return Outcome("done", "PowerState/deallocated")


def generalize(actions: VmActions) -> Outcome:
    state = settled_statuses(actions)
    if state.get("OSState") == "generalized":
        return Outcome("already done", "OSState/generalized")
    if not actions.options.apply:
        return Outcome("planned", f"would mark {actions.vm.key} generalized (it can never start again)")
    if state.get("PowerState") != "deallocated":
        raise StepFailed(f"{actions.vm.key} is {state.get('PowerState')}: generalize needs it deallocated")
    final = actions.write_final_lease()
    try:
        actions.provider.azure(actions.vm).generalize(actions.vm)
    except AzureError:
        # Azure did not generalize it: the VM still takes tags, and release() (at the end of
        # the run) takes the final lease and the mark back, so that a re-run starts over
        actions.generalized = None
        raise
    actions.generalized = True
    return Outcome(
        "done",
        f"marked generalized; the last write to the VM came just before: the final lease {final.describe()}",
        {"final_lease": final.render()},
    )


def verify(actions: VmActions) -> Outcome:
    state = actions.statuses()
    if not actions.options.apply and state.get("OSState") != "generalized":
        return Outcome("planned", "would verify OSState/generalized in the instance view")
    if state.get("OSState") != "generalized":
        raise StepFailed(f"{actions.vm.key}: the instance view does not show OSState/generalized ({state})")
    return Outcome(
        "done",
        f"instance view: {', '.join(f'{k}/{v}' for k, v in sorted(state.items()))}",
        {"statuses": state},
    )
