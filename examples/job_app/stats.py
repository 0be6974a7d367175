"""The job's own module: imported by the driver and by its tasks."""


def square(x: float) -> float:
    return float(x * x)


def summarize(values: list[float]) -> str:
    return f"{len(values)} values, total {sum(values):g}"
