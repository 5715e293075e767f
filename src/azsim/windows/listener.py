"""A script that sets up a WinRM HTTPS listener and prints the listener's certificate.

An Azure Windows image has no HTTPS listener: whoever wants WinRM over HTTPS (imageready's Windows
transport) sets one up, typically through Run Command: a self-signed certificate
(``New-SelfSignedCertificate``), a listener on it (``New-Item WSMan:\\localhost\\Listener
-Transport HTTPS``), a firewall rule, and the certificate printed as PEM so that the client can
trust it (the opt-in live suite does this: tests/live). An azsim Windows guest listens on HTTPS
from its first boot, with azsim's certificate: the model answers such a script by printing the
chain that listener presents, which is what a client must trust.
"""

from __future__ import annotations

from pathlib import Path

from azsim.windows.powershell import ScriptCall, ScriptResult, ScriptView


class HttpsListenerSetup:
    name = "winrm-https-listener"

    def __init__(self, listener_chain: Path) -> None:
        self.listener_chain = listener_chain

    def matches(self, view: ScriptView) -> bool:
        asks_listener = view.asks("WSMan:\\localhost\\Listener")
        return asks_listener and view.asks_all("New-SelfSignedCertificate", "HTTPS")

    def run(self, call: ScriptCall) -> ScriptResult:
        pem = self.listener_chain.read_text(encoding="ascii").replace("\n", "\r\n")
        return ScriptResult(stdout=pem)
