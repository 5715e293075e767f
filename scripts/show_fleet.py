"""Print `azsim status` (JSON on stdin) as one line per VM: power, OS state, imageready tags."""

import json
import sys

for vm in json.load(sys.stdin)["vms"]:
    name = vm["resource_group"] + "/" + vm["name"]
    steps = sorted(k.removeprefix("imageready-step-") for k in vm["tags"] if k.startswith("imageready-step-"))
    print(f"  {name:<24} power={vm['power_state']:<12} os={vm['os_state']:<12} steps={','.join(steps) or '-'}")
