"""The model factory: recipes that turn data into evaluated, exported, registered versions."""
