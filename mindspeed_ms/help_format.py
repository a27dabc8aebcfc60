"""The --help layout of our commands: every option's default shown, unless its help already says
it or there is none to show (argparse's own ArgumentDefaultsHelpFormatter prints "(default: None)"
and repeats defaults the text already explains)."""
import argparse


class DefaultsHelpFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == argparse.SUPPRESS \
                or not action.option_strings:
            return text
        if isinstance(default, (list, tuple)) and not default:
            return text
        return f"{text} (default: %(default)s)"
