"""Writes docs/examples/events.csv: the example file of docs/your-data.md and the README.

1,500 made-up web sessions, each a sequence of event codes of its own length (4 to 24 events),
labelled ``fraud`` (about 4%) or ``ok``. A fraudulent session resets the password and then pays,
with anything in between; an ordinary one may do either, not both in that order. An order-sensitive
rule over variable-length token sequences: what an LSTM reads and a bag of tokens does not.

    python docs/examples/make_events.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

EVENTS = ["view", "view", "view", "search", "cart", "login", "logout", "profile", "help", "pay", "reset_password"]


def session(g: np.random.Generator, fraud: bool) -> list[str]:
    while True:
        events = list(g.choice(EVENTS, g.integers(4, 25)))
        resets = [i for i, e in enumerate(events) if e == "reset_password"]
        pays = [i for i, e in enumerate(events) if e == "pay"]
        is_fraud = bool(resets and pays and max(pays) > min(resets))
        if fraud and not is_fraud:  # plant the pattern: a reset, later a payment
            i, j = sorted(g.choice(len(events), 2, replace=False))
            events[i], events[j] = "reset_password", "pay"
            is_fraud = True
        if is_fraud == fraud:
            return events


def main() -> None:
    g = np.random.default_rng(2026)
    out = Path(__file__).with_name("events.csv")
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["session", "events", "label"])
        for n in range(1500):
            fraud = g.random() < 0.04
            writer.writerow([f"s{n:04d}", " ".join(session(g, fraud)), "fraud" if fraud else "ok"])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
