"""The report's steering section: every effect ``steer --eval`` (or the demo) stored, as tables
with one example completion each. An HTML string; ``features/report.py`` places it."""

from __future__ import annotations

import html
import json
import sqlite3
from itertools import groupby

from monosemantic.steer_eval import stored_effects


def _f(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _pair(row: sqlite3.Row, column: str) -> str:
    """'steered (unsteered)'; — for a value an older version did not store."""
    keys = row.keys()
    got = [row[c] if c in keys else None for c in (column, "base_" + column)]
    return f"{_f(got[0])} ({_f(got[1])})"


def steered_features(con: sqlite3.Connection) -> set[tuple[str, int]]:
    """(dictionary, feature) of every stored effect: the report gives each a page."""
    return {(r["sae"], int(r["feature"])) for r in stored_effects(con)}


def _completions(row: sqlite3.Row) -> str:
    """Every prompt's unsteered and steered completion at the row's scale, folded."""
    pairs = zip(json.loads(row["base_completions"]), json.loads(row["completions"]), strict=True)
    body = "".join(f"<tr><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>" for b, c in pairs)
    return (
        f"<details><summary>all {row['n_prompts']} completions at scale {row['scale']:g}</summary>"
        f"<table><tr><th>unsteered</th><th>steered</th></tr>{body}</table></details>"
    )


def steering_section(con: sqlite3.Connection) -> str:
    """'' when nothing was measured."""
    rows = stored_effects(con)
    if not rows:
        return ""
    parts = [
        "<h3>Steering: measured effects</h3><p class='note'>Each feature clamped (or added) at a multiple "
        "of its maximum activation at every position while the model continues neutral prompts. "
        "<b>fires</b>: share of completions on which the feature fires when the clean model rereads them "
        "(unsteered in brackets); <b>≥0.1 max</b>: the same, counting only activations of a tenth of "
        "its max or more; <b>rel</b>: its largest activation there / its max; <b>promoted</b>: "
        "mean log Σ p of its promoted tokens; <b>log-prob</b>: clean-model log p per generated token "
        "(fluency); <b>repetition</b>: share of repeated 4-grams (fluency: a loop has high log-probs). "
        "<code>monosemantic steer RUN --feature ID --eval --sweep 0,5,10</code> adds rows.</p>"
    ]
    key = lambda r: (r["sae"], r["feature"], r["steered"], r["mode"], r["keep_error"], r["settings"])  # noqa: E731
    for (sae, feature, steered, mode, keep, settings), group in groupby(rows, key=key):
        g = list(group)
        s = json.loads(settings)
        others = [j for j in json.loads(steered) if j != feature]
        title = (
            f"{html.escape(sae)} <a href='features/{html.escape(sae)}-{feature}.html'>#{feature}</a>, {mode}"
            f"{', with ' + ', '.join(f'#{j}' for j in others) if others else ''}, error term "
            f"{'kept' if keep else 'dropped'}, {g[0]['n_prompts']} prompts × {s['max_new_tokens']} tokens"
        )
        body = "".join(
            f"<tr><td>{r['scale']:g}</td><td>{_pair(r, 'fire_rate')}</td>"
            f"<td>{_pair(r, 'strong_fire_rate')}</td><td>{_pair(r, 'relative')}</td>"
            f"<td>{_pair(r, 'promoted_logmass')}</td><td>{_pair(r, 'logprob')}</td>"
            f"<td>{_pair(r, 'repetition')}</td>"
            f"<td class='ctx'>{html.escape(r['example'])}</td></tr>"
            for r in g
        )
        parts.append(
            f"<p><b>{title}</b></p><table><tr><th>scale × max</th><th>fires</th><th>≥0.1 max</th>"
            f"<th>rel</th><th>promoted</th><th>log-prob</th><th>repetition</th>"
            f"<th>example (first prompt)</th></tr>{body}</table>"
            f"<p class='note'>unsteered: {html.escape(g[0]['base_example'])}</p>" + _completions(g[-1])
        )
    return "\n".join(parts)
