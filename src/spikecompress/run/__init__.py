"""The stage runner: recipes (schema, YAML files, ``--set``), stages (attach → train → finalize →
save → measure, resumable) and the CLI's actions.

    recipe = load_recipe("magnitude_qat", overrides=["stages.1.epochs=2"])
    result = run_recipe(recipe, "runs/a")        # {"stages", "metrics", "artifact", "report"}
"""

from spikecompress.run.recipe import OptimizerConfig, Recipe, Stage
from spikecompress.run.recipe_files import dump_yaml, load_recipe, shipped_recipes
from spikecompress.run.stages import run_recipe

__all__ = ["OptimizerConfig", "Recipe", "Stage", "dump_yaml", "load_recipe", "run_recipe",
           "shipped_recipes"]
