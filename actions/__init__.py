"""The irreversible steps: run only behind a green gate, change the VM only with --apply."""
