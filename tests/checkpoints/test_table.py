"""The supported-models table in the README and docs is the one the code generates."""
import pytest

from omnistage.checkpoints.recipes import RECIPES
from omnistage.checkpoints.table import BEGIN, END, supported_table, with_table
from omnistage.cli import main
from tests.conftest import ROOT


@pytest.mark.parametrize("doc", ["README.md", "docs/models.md"])
def test_the_documented_table_is_the_generated_one(doc):
    text = (ROOT / doc).read_text()
    assert BEGIN in text and END in text
    assert with_table(text) == text, f"{doc}: the supported-models table is stale; paste `omnistage models` into it"


def test_every_architecture_has_a_row_and_a_tiny_checkpoint(capsys):
    assert main(["models"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == supported_table()
    rows = [line for line in printed.splitlines()[2:]]
    assert len(rows) == len(RECIPES) + 1  # + the Qwen2.5-Omni single-directory checkpoint
    assert all("`tiny:" in row for row in rows), [r for r in rows if "`tiny:" not in r]
    assert "| `StableDiffusionXLPipeline` | text (`text_encode`) → denoise (`diffusion`) → decode (`vae_decode`) | " \
           "image, mask, prompt | image | `tiny:sdxl` |" in rows
