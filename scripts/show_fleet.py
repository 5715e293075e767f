"""Print `azsim status` (JSON on stdin) as one line per VM: power, OS state, imageready tags."""

import json
import sys

for vm in json.load(sys.stdin)["vms"]:
    name = vm["resource_group"] + "/" + vm["name"]
    prefix = "imageready-step-"
    steps = sorted(k.removeprefix(prefix) for k in vm["tags"] if k.startswith(prefix))
    done = ",".join(steps) or "-"
    print(f"  {name:<24} power={vm['power_state']:<12} os={vm['os_state']:<12} steps={done}")
