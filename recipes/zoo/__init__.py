"""The built-in recipes, one file each: every module here is imported by the registry, and importing a
file registers its recipe(s). Adding a recipe is adding a file here, or registering one from your own
code with :func:`recipes.register_recipe`."""
