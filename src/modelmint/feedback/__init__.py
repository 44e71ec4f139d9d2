"""The feedback loop: ratings of served requests, captured samples, datasets built from
them, and the comparison of model versions on quality and money."""
