"""Choosing and scoring the doubts on the reported class from `darefuse evaluate`'s per-case rows, which hold the
truth class, the reported class, the class head's probabilities and the map's volumes: no network is run again.
- the class doubt (postprocess.class_in_doubt): the class head's top probability below a threshold;
- the oedema doubt (postprocess.oedema_in_doubt): a glioma call whose map shows more than a threshold times as
  much oedema as tumour core.

A wrong class a doubt flags is no longer a confident wrong answer; a right class it flags is a false alarm, a
study a reader looks at again for nothing. Each choice trades the two with a cap on false alarms fixed in advance.
"""
from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

from ..constants import CLASSES
from ..pipeline.postprocess import OEDEMA_DOUBTED_CLASS, PostprocessConfig, class_in_doubt, oedema_in_doubt

#: The thresholds scored (the class head's top probability below which a run is in doubt).
CANDIDATES = (0.6, 0.7, 0.8, 0.9, 0.95)
#: At most this share of right classes flagged: about one study in ten looked at again for its class.
MAX_RIGHT_FLAGGED = 0.10
#: The oedema doubt's thresholds scored (oedema over tumour core above which a glioma call is in doubt).
OEDEMA_CANDIDATES = (6.0, 8.0, 10.0, 12.0, 15.0, 20.0)


def in_doubt(row: dict, below: Optional[float]) -> bool:
    probabilities = [row["class_probabilities"][c] for c in CLASSES]
    return class_in_doubt(PostprocessConfig(class_doubt_below=below), probabilities)


def candidate_row(rows: Sequence[dict], below: Optional[float]) -> dict:
    """How many wrong and right reported classes the doubt at `below` flags over `rows`."""
    wrong = [row for row in rows if row["predicted_class"] != row["class"]]
    right = [row for row in rows if row["predicted_class"] == row["class"]]
    return {"below": below, "wrong": len(wrong), "wrong_flagged": sum(in_doubt(row, below) for row in wrong),
            "right": len(right), "right_flagged": sum(in_doubt(row, below) for row in right)}


def candidate_table(rows: Sequence[dict], candidates: Sequence[float] = CANDIDATES) -> List[dict]:
    return [candidate_row(rows, below) for below in candidates]


def choose(table: Sequence[dict]) -> Dict[str, Optional[float]]:
    """The highest threshold that flags at most MAX_RIGHT_FLAGGED of the right classes and at least one wrong one;
    None (the doubt stays off) when none does."""
    return _most_sensitive(table, "below", max, "classes")


def _most_sensitive(table: Sequence[dict], key: str, pick: Callable, calls: str) -> Dict[str, Optional[float]]:
    """Of the candidates flagging at least one wrong call and at most MAX_RIGHT_FLAGGED of the right ones, the one
    `pick` (max or min) takes by threshold."""
    eligible = [c for c in table if c["right"] and c["right_flagged"] <= MAX_RIGHT_FLAGGED * c["right"]
                and c["wrong_flagged"] > 0]
    if not eligible:
        return {"chosen": None, "why": f"no candidate flags any wrong {calls} while flagging at most "
                                       f"{MAX_RIGHT_FLAGGED:.0%} of the right ones"}
    best = pick(eligible, key=lambda c: c[key])
    return {"chosen": best[key], "why": f"flags {best['wrong_flagged']} of {best['wrong']} wrong {calls} and "
                                        f"{best['right_flagged']} of {best['right']} right ones"}


def oedema_flagged(row: dict, above: Optional[float]) -> bool:
    return oedema_in_doubt(PostprocessConfig(oedema_doubt_above=above), row["predicted_class"], row["shown_ml"])


def oedema_candidate_row(rows: Sequence[dict], above: float) -> dict:
    """How many wrong and right glioma calls (the only calls the oedema doubt questions) it flags at `above`;
    rows without the map's volumes (reports before session 14) are left out."""
    calls = [row for row in rows if row["predicted_class"] == OEDEMA_DOUBTED_CLASS and "shown_ml" in row]
    wrong = [row for row in calls if row["class"] != OEDEMA_DOUBTED_CLASS]
    right = [row for row in calls if row["class"] == OEDEMA_DOUBTED_CLASS]
    return {"above": above, "wrong": len(wrong), "wrong_flagged": sum(oedema_flagged(row, above) for row in wrong),
            "right": len(right), "right_flagged": sum(oedema_flagged(row, above) for row in right)}


def oedema_candidate_table(rows: Sequence[dict], candidates: Sequence[float] = OEDEMA_CANDIDATES) -> List[dict]:
    return [oedema_candidate_row(rows, above) for above in candidates]


def choose_oedema(table: Sequence[dict]) -> Dict[str, Optional[float]]:
    """The lowest threshold that flags at most MAX_RIGHT_FLAGGED of the right glioma calls and at least one wrong
    one; None (the doubt stays off) when none does."""
    return _most_sensitive(table, "above", min, "glioma calls")


class Doubt(NamedTuple):
    """What a report, the benchmark and a card need of one doubt."""
    setting: str  # its key in the card's postprocess.config
    heading: str  # its tables' threshold column
    calls: str  # what it judges
    key: str  # the threshold's key in a candidate row
    table: Callable[[Sequence[dict]], List[dict]]
    choose: Callable[[Sequence[dict]], Dict[str, Optional[float]]]
    rule: str
    note: str  # under its table in a report


DOUBTS = {
    "class": Doubt("class_doubt_below", "class head's top probability below", "classes", "below", candidate_table,
                   choose, f"the highest of {list(CANDIDATES)} flagging at most {MAX_RIGHT_FLAGGED:.0%} of the right "
                   "classes and at least one wrong one",
                   "A flagged run is low confidence, naming the class head's two likeliest classes: a wrong class it "
                   "does not flag is a confident wrong answer."),
    "oedema": Doubt("oedema_doubt_above", "oedema over tumour core above", "glioma calls", "above",
                    oedema_candidate_table, choose_oedema, f"the lowest of {list(OEDEMA_CANDIDATES)} flagging at most "
                    f"{MAX_RIGHT_FLAGGED:.0%} of the right glioma calls and at least one wrong one",
                    "A glioma call whose map shows more oedema (SNFH) than this many times its tumour core (TC) is low "
                    "confidence, naming metastasis; the class is unchanged."),
}


def markdown_lines(models: Dict[str, dict]) -> List[str]:
    """`darefuse evaluate`'s sections, one per doubt: each model's candidates on these cases, the card's marked *."""
    classed = {name: r for name, r in models.items() if r.get("per_case") and "class_probabilities" in r["per_case"][0]}
    if not classed:
        return []
    return [line for name, doubt in DOUBTS.items() for line in _section(classed, name, doubt)]


def _section(models: Dict[str, dict], name: str, doubt: Doubt) -> List[str]:
    lines = [f"## The {name} doubt at each candidate", "",
             f"| model | {doubt.heading} | wrong {doubt.calls} flagged | right {doubt.calls} flagged |",
             "|---|---|---|---|"]
    for model, r in models.items():
        card = r["postprocess"]["config"].get(doubt.setting)
        for c in doubt.table(r["per_case"]):
            mark = "*" if c[doubt.key] == card else ""
            lines.append(f"| {model} | {c[doubt.key]:g}{mark} | {c['wrong_flagged']} of {c['wrong']} | "
                         f"{c['right_flagged']} of {c['right']} |")
    return lines + ["", doubt.note, ""]
