"""Stage signatures compared: which settings differ between a saved stage and what the flags ask for, and
how the refusal line says so (the Runner refuses to reuse a stage whose signature differs)."""
from __future__ import annotations

from typing import Dict, List

from keras_kd import seeds


def signature_changes(saved: dict, want: dict, shared_teachers: bool = False) -> List[tuple]:
    """(KEY, old, new, [stages]) for each setting that differs, upstream stages' included, with the stages
    (the one compared and its init or teacher stages) where it differs. With `shared_teachers`, a teacher
    stage's seed is not compared: every seed's run distils from the first seed's teacher.
    """
    found: Dict[tuple, tuple] = {}

    def walk(a: dict, b: dict, where: str) -> None:
        for k in list(dict.fromkeys([*b, *a])):
            if k == "stage" or (k == "seed" and shared_teachers
                                and where.split("/")[-1].startswith(seeds.TEACHER_PREFIX)):
                continue
            old, new = a.get(k), b.get(k)
            if isinstance(old, dict) and isinstance(new, dict) and old.get("stage") == new.get("stage"):
                walk(old, new, new.get("stage", k))
            elif old != new:
                found.setdefault((k, _short(old), _short(new)), (k, old, new, []))[3].append(where)

    walk(saved, want, want.get("stage", ""))
    return list(found.values())


def describe_changes(changes: List[tuple], own: str) -> List[str]:
    """`KEY=old (now new)` for each change; one in an init or teacher stage says where (`lr=0.003 (now 0.01)
    in classify/teacher`), one shared by the stage `own` and its upstream stages is said once."""
    return [f"{k}={_short(old)} (now {_short(new)})"
            + ("" if own in where else f" in {', '.join(dict.fromkeys(where))}") for k, old, new, where in changes]


def precision_hint(changes: List[tuple]) -> str:
    """How to reuse stages whose teacher differs only in precision. `auto` follows the CPU, so a model_dir
    moved to another machine, or trained before `auto` chose bfloat16 on this CPU, differs in it alone."""
    saved = {old for k, old, _, _ in changes if k == "precision"}
    if len(saved) != 1 or any(k != "precision" for k, *_ in changes):
        return ""
    return f", --teacher_precision={saved.pop() or 'float32'} to reuse it,"  # float32 is left out of signatures


def _short(value) -> str:
    """A setting as the error line shows it; an upstream stage by its name, a setting not used as unset."""
    if value is None:
        return "unset"
    return value.get("stage", "?") if isinstance(value, dict) else repr(value)
