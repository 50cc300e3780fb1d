"""docs/method.md's recipe tables are generated from the recipe objects and stay in sync with them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from salfcbm.reproduce import RECIPES, get_recipe
from salfcbm.reproduce import sources as sources_mod
from salfcbm.reproduce.recipes import Recipe
from salfcbm.reproduce.sources import SOURCES, Source

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("method_docs", ROOT / "scripts" / "method_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(gen, name: str) -> dict[str, list[str]]:
    """``{field: [recipe, paper, LF-CBM, authors, source, reason]}`` of one recipe's rendered table."""
    out = {}
    for line in gen.recipe_table(name):
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            out[cells[0].strip("`")] = cells[1:]
    return out


def test_method_page_matches_the_recipes(gen):
    page = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    assert gen.START in page and gen.END in page
    assert page == gen.render(page), "docs/method.md is out of date: run `python scripts/method_docs.py`"


def test_one_table_per_recipe_with_every_setting_and_its_value(gen):
    for name, recipe in RECIPES.items():
        rows = _rows(gen, name)
        assert list(rows) == list(recipe.settings()), name
        assert rows["key"][0] == recipe.key and rows["version"][0] == str(recipe.version)
    t2 = _rows(gen, "table2-imagenet-seg")
    assert t2["interpretability_cutoff"][0] == "None (off)" and "missile (class 744)" in t2["concepts"][5]
    assert _rows(gen, "table1-places365")["standard_dense"][0] == "refit"
    assert "12x12" in _rows(gen, "table1-imagenet")["grid"][3]  # the authors' demo model, not followed


def test_every_source_names_a_recipe_field_and_a_recipe_table_or_dataset():
    fields = set(get_recipe("table1-imagenet").settings())
    scopes = set(RECIPES) | {r.table for r in RECIPES.values()} | {r.dataset for r in RECIPES.values()}
    for key in SOURCES:
        scope, _, field = key.rpartition(":")
        assert field in fields, f"SOURCES[{key!r}] documents no Recipe field"
        assert not scope or scope in scopes, f"SOURCES[{key!r}]: {scope!r} is no recipe, table or dataset"


def test_most_specific_source_wins_and_a_field_without_one_renders_empty(gen, monkeypatch):
    monkeypatch.setitem(sources_mod.SOURCES, "table1-cub:lam", Source(paper="cub-only"))
    assert _rows(gen, "table1-cub")["lam"][1] == "cub-only"
    assert _rows(gen, "table1-imagenet")["lam"][1] != "cub-only"
    # a field another change adds (and documents later) is rendered with an empty provenance
    to_dict = Recipe.to_dict
    monkeypatch.setattr(Recipe, "to_dict", lambda self: {**to_dict(self), "future_field": "softmax"})
    monkeypatch.delitem(sources_mod.SOURCES, "lam")
    rows = _rows(gen, "table1-imagenet")
    assert rows["future_field"] == ["softmax", "", "", "", "", ""]
    assert rows["lam"] == ["0.0001", "", "", "", "", ""]


def test_the_rest_of_the_page_is_kept(gen):
    page = f"# T\n\nwritten by hand\n\n{gen.START}\nold table\n{gen.END}\n\n## After\n\nalso by hand\n"
    new = gen.render(page)
    assert new.startswith("# T\n\nwritten by hand\n\n" + gen.START) and new.endswith(gen.END + "\n\n## After\n\nalso by hand\n")
    assert "old table" not in new and "### table2-imagenet-seg@v" in new
