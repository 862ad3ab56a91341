"""Advice from a run's own evidence: "am I overfitting, would more data help, what next?", each point with its numbers.

Facts are computed from the run directory (:mod:`transferlab.advice.facts`); rules are data
(:data:`transferlab.advice.rules.RULES`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transferlab.advice.facts import gather_facts
from transferlab.advice.rules import RULES, Rule
from transferlab.fileio import write_json
from transferlab.record import layout
from transferlab.record.runfiles import RunFiles, load_run


@dataclass(frozen=True)
class Advice:
    """One applicable rule: its id, severity, message with the numbers filled in, and those numbers."""

    id: str
    severity: str
    message: str
    facts: dict[str, Any]

    def __str__(self) -> str:
        return f"[{self.severity}] {self.message}"


def advice_for(run: RunFiles, rules: tuple[Rule, ...] = RULES) -> list[Advice]:
    """Apply ``rules`` to an already loaded run."""
    facts = gather_facts(run)
    return [
        Advice(rule.id, rule.severity, rule.message.format(**facts), {key: facts[key] for key in rule.needs})
        for rule in rules
        if rule.applies(facts)
    ]


def advise(run_path: str | Path) -> list[Advice]:
    """Advice for the run in ``run_path``, also written to ``advice.json`` there."""
    advice = advice_for(load_run(run_path))
    write_json(Path(run_path) / layout.ADVICE, [asdict(item) for item in advice])
    return advice


def format_advice(advice: list[Advice]) -> str:
    """Advice for the terminal, one indented line per point."""
    if not advice:
        return "advice: nothing to flag"
    return "advice:\n" + "\n".join(f"  {item}" for item in advice)


__all__ = ["RULES", "Advice", "Rule", "advice_for", "advise", "format_advice"]
