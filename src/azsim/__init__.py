"""azsim: a local stand-in for the parts of Azure Resource Manager and Entra ID imageready uses."""
