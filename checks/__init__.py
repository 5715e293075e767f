"""The pre-flight checks: the policy a change board signs off (docs/checks.md)."""
