"""azsim's Windows guests: real WS-Man endpoints in front of a model of a Windows machine.

``model`` holds the machine's state (from the scenario's ``guest:`` mapping), ``powershell``
decides which handler answers a script by what the script asks for, ``facts`` and ``sysprep``
are the handlers for the harness's scripts, ``wsman`` speaks the WS-Management shell protocol,
``auth`` does Basic and NTLM (with message encryption), ``endpoint`` serves HTTP(S), and
``guest.WindowsGuest`` puts them together behind ARM's guest seam (``azsim.guestapi``).
"""
