"""The README's "Your own data, end to end" block, run as written: the shell block between its two
markers, in an empty folder that holds only the user's two CSV files, with the installed ``raymeta``
command on PATH. Its Ray commands join this test's Ray instance through ``$RAY_ADDRESS`` (as inside
``ray job submit``), which the README's text does not name. Slow tier: MiniLM meta-trains for 20
steps, then it and the plain model are scored in one ``raymeta evaluate`` (minutes on 2 CPUs)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO

BEGIN, END = "<!-- own-data example: begin -->", "<!-- own-data example: end -->"

# Intents a user might have: a few phrasings each, filled with slot words (enough rows for 2-shot
# splits).
KNOWN = {
    "check_balance": ["what is my {} balance", "how much money is in my {} account",
                      "show the {} balance"],
    "transfer": ["send money from {} to savings", "move cash out of my {} account",
                 "transfer funds via {}"],
    "card_lost": ["I lost my {} card", "my {} card was stolen", "block my missing {} card"],
    "open_account": ["open a new {} account", "I want to start a {} account",
                     "how do I sign up for {}"],
    "exchange_rate": ["what is the {} exchange rate", "convert dollars to {}",
                      "how many euros for {}"],
    "pin_change": ["change the pin of my {} card", "reset my {} pin", "I forgot the pin for {}"],
}
NEW = {
    "book_flight": ["book a flight to {}", "I need a plane ticket to {}",
                    "find flights going to {}"],
    "weather": ["what is the weather in {}", "will it rain in {} today",
                "forecast for {} this week"],
    "play_music": ["play some {} music", "put on {} songs", "start a {} playlist"],
}
SLOTS = ["paris", "checking", "visa", "jazz", "tokyo", "business", "student", "rock", "berlin",
         "travel"]


def write_csv(path: Path, intents: dict[str, list[str]], per_class: int, seed: int) -> None:
    rng = random.Random(seed)
    rows = [f"{rng.choice(templates).format(rng.choice(SLOTS))},{label}"
            for label, templates in intents.items() for _ in range(per_class)]
    rng.shuffle(rows)
    path.write_text("text,label\n" + "\n".join(rows) + "\n")


def readme_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block.startswith("```bash\n") and block.endswith("```"), block[:200]
    return block[len("```bash\n"):-3]


def _strict(path: Path) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.slow
def test_the_readme_own_data_example_runs_as_written(ray_local, tmp_path):
    write_csv(tmp_path / "my_intents.csv", KNOWN, per_class=12, seed=0)
    write_csv(tmp_path / "new_intents.csv", NEW, per_class=10, seed=1)
    write_csv(tmp_path / "inbox.csv", NEW, per_class=20, seed=2)  # its labels: a column kept
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block()], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert ("labels  6: card_lost, check_balance, exchange_rate, open_account, pin_change, "
            "transfer" in r.stdout)
    # 5 training rows a class: a K-shot task, shown with the reason it has no meta-training episode
    # (not an error)
    assert ("episode none at ways=5 shots=5 queries=5: task 'new_intents'"
            in " ".join(r.stdout.split()))
    final = tmp_path / "runs" / "my_run" / "final"
    assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()
    assert (f"--init runs/my_run: scoring {Path('runs/my_run/final')} (final/: the last step)"
            in r.stderr)
    # one evaluate: the plain model and the run, on the same splits, the run paired with the plain
    plain, run = "offline:all-MiniLM-L6-v2", "runs/my_run"
    out = tmp_path / "runs" / "my_run" / "new_intents.json"
    res = _strict(out)
    assert res["inits"] == [plain, run] and res["baseline"] == plain
    scored = {i: res["results"][i]["tasks"]["new_intents"]["methods"]["prototype"]["2"]
              for i in (plain, run)}
    assert scored[run] != scored[plain]  # a different init, scored for itself
    assert res["results"][plain]["splits"] == res["results"][run]["splits"]
    gain = res["gains"][run]["new_intents"]["K=2 prototype"]
    assert gain["n"] == 5 and gain["values"] == pytest.approx(
        [b - a for a, b in zip(scored[plain]["values"], scored[run]["values"])])
    # the one table the README shows, with the paired-gain column, printed and beside the results
    header = f"| task | setting | {plain} | {run} | gain: {run} |"
    assert header in r.stdout and "| new_intents (accuracy) | K=2 prototype |" in r.stdout
    assert header in out.with_suffix(".md").read_text()
    readme = (REPO / "README.md").read_text(encoding="utf-8").split(END, 1)[1]
    assert header in readme  # the README's example is this output's format
    assert out.with_suffix(".png").is_file()
    # fit: a classifier directory chosen by CV (the plain encoder and the run, 3 heads each)
    clf = tmp_path / "new_intents_classifier"
    spec = json.loads((clf / "classifier.json").read_text())
    assert spec["labels"] == sorted(NEW) and len(spec["selection"]) == 6
    assert (clf / "README.md").is_file() and "chose" in r.stdout
    # predict: every inbox row labelled, its columns kept
    import csv

    with open(tmp_path / "inbox_labelled.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60 and {"text", "label", "predicted_label"} <= set(rows[0])
    assert np_mean([row["label"] == row["predicted_label"] for row in rows]) > 0.5


def np_mean(xs: list[bool]) -> float:
    return sum(xs) / len(xs)
