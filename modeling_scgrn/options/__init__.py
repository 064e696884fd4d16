"""The options users give: command-line names, choice lists, defaults and help strings shared by every script
(`arguments`, standard library only, so that a script reads it before importing scgrn and `--help` answers at
once), and config dataclasses built from plain dicts with their types checked (`typed`)."""
