"""What a run leaves behind, built from the events the engine emits: results, the stored run,
the machine lifecycle timeline, its SVG, the Markdown summary. Nothing here imports the engine
(``vmrunner.runner``).
"""
