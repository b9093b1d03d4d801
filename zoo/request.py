"""One run request: what `genpipe run`, `compile`, `submit`, `schedule` and the pipeline's
ingest step are asked to train, checked once by `RunRequest.checked()`.

The checks are the library's own (zoo.models for the model, preset and typed `--set`
overrides, zoo.blessing for thresholds against the metrics the model reports, zoo.tracking for
the registered model name; the champion tolerance is a finite fraction >= 0); each bad value
raises one ConfigError line naming the value, the flag or parameter it came from (`where`)
and what is valid.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from zoo.errors import ConfigError

#: how errors name each field on the command line (`genpipe run/submit`)
CLI_FLAGS: Mapping[str, str] = {
    "model": "MODEL",
    "source": "--data",
    "preset": "--preset",
    "overrides": "--set",
    "thresholds": "--thresholds",
    "registered_name": "--name",
    "test_fraction": "--test-fraction",
    "champion_tolerance": "--tolerance",
}
#: how errors name each field inside a pipeline (its parameters are the field names)
PARAMS: Mapping[str, str] = {
    "model": "model",
    "source": "source",
    "preset": "preset",
    "overrides": "overrides",
    "thresholds": "thresholds",
    "registered_name": "registered_name",
    "test_fraction": "test_fraction",
    "champion_tolerance": "champion_tolerance",
}


@dataclass(frozen=True)
class RunRequest:
    """A model to train on a data source with a config, blessing thresholds and a name.

    `overrides` are `--set key=value` pairs (strings) or a pipeline's JSON values; both are
    typed against the model's config by `checked()`. `registered_name` "" means MODEL-DATASET.
    `champion_tolerance`: how much worse than the champion (a fraction of its metric) still
    blesses; evaluate applies it, but a bad one fails here, before anything trains.
    """

    model: str
    # The rest by name only: eight fields, several of one type, built in the CLI, the local
    # pipeline and the ingest component, where a positional slip would pass type checks.
    _: KW_ONLY
    source: str = "digits"
    preset: str = "default"
    overrides: Mapping[str, Any] = field(default_factory=dict, hash=False)
    thresholds: str = ""
    registered_name: str = ""
    test_fraction: float = 0.1
    champion_tolerance: float = 0.0

    @classmethod
    def from_cli(
        cls,
        model: str,
        *,
        source: str = "digits",
        preset: str = "default",
        sets: list[str] | tuple[str, ...] = (),
        thresholds: str = "",
        registered_name: str = "",
        test_fraction: float = 0.1,
        where: Mapping[str, str] = CLI_FLAGS,
        champion_tolerance: float = 0.0,
    ) -> RunRequest:
        """The request behind command-line options (`--set` items parsed, not yet typed)."""
        from zoo.config import parse_overrides

        overrides = parse_overrides(sets, where["overrides"])
        return cls(
            model,
            source=source,
            preset=preset,
            overrides=overrides,
            thresholds=thresholds,
            registered_name=registered_name,
            test_fraction=test_fraction,
            champion_tolerance=champion_tolerance,
        )

    def to_kwargs(self) -> dict[str, Any]:
        """The fields as JSON-ready keyword arguments (e.g. for a warm-process call)."""
        fields = dataclasses.asdict(self)
        fields["overrides"] = dict(self.overrides)
        return fields

    def overrides_json(self) -> str:
        """`overrides` as the pipeline's `overrides` parameter (a JSON object, sorted keys)."""
        return json.dumps(dict(self.overrides), sort_keys=True)

    def checked(self, where: Mapping[str, str] = CLI_FLAGS) -> CheckedRun:
        """Check every field once; `where` names them in errors (CLI_FLAGS or PARAMS).

        Imports the model's module (and with it Keras) to type the config and list its metrics.
        """
        from zoo import models
        from zoo.blessing import check_thresholds
        from zoo.data.sources import default_registered_name
        from zoo.data.splits import check_test_fraction
        from zoo.tracking import check_registered_name

        models.check_name(self.model)
        check_test_fraction(self.test_fraction, where["test_fraction"])
        check_tolerance(self.champion_tolerance, where["champion_tolerance"])
        if self.preset not in models.PRESETS:
            raise ConfigError(
                f"{where['preset']} {self.preset!r} is not one of {', '.join(models.PRESETS)}"
            )
        config = models.resolve_config(
            self.model, self.preset, dict(self.overrides), where=where["overrides"]
        )
        thresholds = check_thresholds(self.thresholds, self.model, where["thresholds"])
        if self.registered_name:
            name = check_registered_name(self.registered_name, where["registered_name"])
        else:
            name = default_registered_name(self.model, self.source or "digits")
        return CheckedRun(self, config, thresholds, name)


def check_tolerance(value: Any, where: str) -> float:
    """The champion tolerance: a finite fraction >= 0 (0.01 = 1% worse than the champion)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0:
        sep = " " if where.startswith("-") else "="
        raise ConfigError(
            f"{where}{sep}{value!r} must be a number >= 0: the fraction by which a model may "
            "be worse than the champion and still be blessed (e.g. 0.01 = 1%)"
        )
    return float(value)


@dataclass(frozen=True)
class CheckedRun:
    """A RunRequest that passed `checked()`, with what the checks resolved."""

    request: RunRequest
    #: the model's typed config: preset with the overrides applied
    config: Any = field(hash=False)
    #: blessing thresholds: the model's defaults with the request's JSON over them
    thresholds: Mapping[str, Any] = field(hash=False)
    #: `--name`, else MODEL-DATASET (`vae-digits`)
    registered_name: str
