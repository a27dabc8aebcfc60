"""Every command's --help explains every option (issue: options without help text)."""
import argparse
import importlib

import pytest

from mindspeed_ms.arguments import build_parser

COMMANDS = ["mindspeed_ms.parallel.plan", "mindspeed_ms.inference.chat", "mindspeed_ms.inference.evaluate",
            "mindspeed_ms.inference.serve", "mindspeed_ms.tools.build_tokenizer", "mindspeed_ms.tools.make_demo_dataset",
            "mindspeed_ms.tools.make_tiny_checkpoint", "mindspeed_ms.tools.validate_ascend",
            "mindspeed_ms.rl.make_preference_dataset", "mindspeed_ms.inference.demo_report", "auto_convert.code.cli",
            "auto_convert.launch"]


class _Parsed(Exception):
    pass


def _parser_of(module, monkeypatch):
    """The ArgumentParser a command's main() builds (caught at its first parse call)."""
    seen = []

    def grab(self, *a, **k):
        seen.append(self)
        raise _Parsed()
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", grab)
    main = importlib.import_module(module).main
    with pytest.raises((_Parsed, SystemExit)):
        try:
            main([])
        except TypeError:       # a main() that reads sys.argv itself
            monkeypatch.setattr("sys.argv", [module])
            main()
    assert seen, module
    return seen[0]


@pytest.mark.parametrize("module", COMMANDS)
def test_every_option_has_help(module, monkeypatch):
    parser = _parser_of(module, monkeypatch)
    missing = [a.option_strings or [a.dest] for a in parser._actions
               if not (a.help or "").strip() and not isinstance(a, argparse._HelpAction)]
    assert not missing, f"{module}: options without help: {missing}"


def test_training_flags_have_help():
    missing = [a.option_strings[0] for a in build_parser()._actions if a.option_strings and not (a.help or "").strip()]
    assert not missing, missing
