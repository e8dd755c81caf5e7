"""Actions a step ``uses``: where they come from (remote, local, cached) and what their
``action.yml`` says. Below the engine: it fetches and reads actions, it never runs them."""
