"""The gate: per-VM verdict from check outcomes, fail closed.

Pure logic, no pytest: the plugin feeds it what was expected and what happened; the gate says
whether a VM's actions may run, and why not. Verdict files carry a green gate from a checks stage
to a later actions stage.

Rules (``docs/gate.md``): a VM's gate opens only when every expected check case of that VM ended
``passed``, ``waived`` or ``not_applicable`` (the plugin decides "not applicable", only from the
check's OS and its ``requires=``: ``imageready.applicability``). Anything else — failed, error,
xfailed, xpassed, skipped for any other reason, deselected, not collected, not run — keeps it shut.
One VM's gate never depends on another's.

(The package: ``core`` the gate itself, ``waivers``, ``verdicts`` the files that carry a green
gate between stages and the policy digest, ``resume`` the signed step tags.)"""

from imageready.gate.core import (
    GREEN_OUTCOMES,
    OUTCOMES,
    RED_OUTCOMES,
    UNJUDGED,
    VERDICT_SCHEMA,
    CaseRecord,
    VmGate,
    describe_outcome,
    expected_digest,
    gate_blockers,
    gate_status,
)
from imageready.gate.resume import (
    STEP_TAG,
    TAG_MAX,
    Resume,
    parse_step_tag,
    sign_step_tag,
    step_tag_problem,
)
from imageready.gate.verdicts import (
    VerdictDecision,
    VerdictError,
    facts_digest,
    judge_verdict,
    load_verdicts,
    parse_duration,
    policy_digest,
    verdict_document,
    verdict_filename,
    verdict_inconsistency,
    write_verdict,
)
from imageready.gate.waivers import (
    Waiver,
    WaiverBook,
    WaiverError,
    load_waivers,
    parse_expiry,
    path_matches,
)

__all__ = [
    "GREEN_OUTCOMES",
    "OUTCOMES",
    "RED_OUTCOMES",
    "STEP_TAG",
    "TAG_MAX",
    "UNJUDGED",
    "VERDICT_SCHEMA",
    "CaseRecord",
    "Resume",
    "VerdictDecision",
    "VerdictError",
    "VmGate",
    "Waiver",
    "WaiverBook",
    "WaiverError",
    "describe_outcome",
    "expected_digest",
    "facts_digest",
    "gate_blockers",
    "gate_status",
    "judge_verdict",
    "load_verdicts",
    "load_waivers",
    "parse_duration",
    "parse_expiry",
    "parse_step_tag",
    "path_matches",
    "policy_digest",
    "sign_step_tag",
    "step_tag_problem",
    "verdict_document",
    "verdict_filename",
    "verdict_inconsistency",
    "write_verdict",
]
