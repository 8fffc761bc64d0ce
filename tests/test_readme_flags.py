"""README's flags table tells what the flags give: every preset cell against what `python main.py --preset=P`
parses to (flags/presets.py on Config's defaults, and the flags' own defaults), every flag of main.py in it."""
import re

import pytest
from absl.flags import FLAGS

from conftest import REPO

COLUMNS = {"smoke": "smoke", "quick": "quick (default)", "paper": "paper"}


def _cells(line: str):
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _table():
    """(header, rows) of the table in README's "Flags and presets" section."""
    section = (REPO / "README.md").read_text().split("\n## Flags and presets\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    return _cells(lines[0]), [_cells(ln) for ln in lines[2:]]


def _names(cell: str):
    """`--dkd_{alpha,beta}` → dkd_alpha, dkd_beta; every `--name` of a flag cell, in order."""
    cell = re.sub(r"--(\w*)\{([^}]*)\}(\w*)",
                  lambda m: " ".join(f"--{m[1]}{x.strip()}{m[3]}" for x in m[2].split(",")), cell)
    return re.findall(r"--(\w+)", cell)


def _same(text: str, value, depth: int = 0) -> bool:
    """A cell's text says `value`: on/off for booleans, any spelling of a number, lists joined by ',' (pairs
    by ':'), nothing for an empty string."""
    if isinstance(value, bool):
        return text == ("on" if value else "off")
    if isinstance(value, (int, float)):
        try:
            return float(text) == value
        except ValueError:
            return False
    if isinstance(value, (list, tuple)):
        parts = text.split("," if depth == 0 else ":") if text else []
        return len(parts) == len(value) and all(_same(p, v, depth + 1) for p, v in zip(parts, value))
    return text == str(value)


def test_every_flag_of_main_py_has_a_row(parse):
    defined = {f.name for f in FLAGS.get_flags_for_module("flags.main_flags")}  # parse imported it
    _, rows = _table()
    listed = [n for row in rows for n in _names(row[0])]
    assert len(listed) == len(set(listed)), "a flag has two rows"
    assert set(listed) == defined - {"preset"}, (sorted(defined - {"preset"} - set(listed)),
                                                 sorted(set(listed) - defined))


@pytest.mark.parametrize("preset", list(COLUMNS))
def test_each_preset_column_says_what_the_preset_gives(parse, preset):
    cfg = parse(f"--preset={preset}")
    header, rows = _table()
    column = header.index(COLUMNS[preset])
    wrong = []
    for row in rows:
        names = _names(row[0])
        parts = re.split(r" / |, |×", row[column]) if row[column] else []
        parts += [""] * (len(names) - len(parts))
        values = [getattr(cfg, n) if hasattr(cfg, n) else FLAGS[n].value for n in names]
        if len(parts) != len(names) or not all(_same(p, v) for p, v in zip(parts, values)):
            wrong.append(f"{row[0]}: README {row[column]!r}, flags give {values}")
    assert not wrong, "\n".join(wrong)
