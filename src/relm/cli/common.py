"""What the subcommands share."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show real defaults in --help, but not the noise of `(default: None)` or `(default: False)`."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default == []:
            return action.help
        return super()._get_help_string(action)
