"""Each vocabulary of :mod:`pipeline.vocabulary` is implemented exactly, and the schema takes it."""

import pytest

from pipeline import vocabulary
from pipeline.recipe import schema
from pipeline.registry import Registry


def test_data_sets_are_the_vocabulary():
    from pipeline.data import DATASETS, describe_datasets

    assert DATASETS.names() == vocabulary.DATASETS.names() == list(schema.DATASET_NAMES)
    assert describe_datasets() == list(vocabulary.DATASETS.items())


def test_fit_modes_are_the_vocabulary():
    from pipeline.data.cache import PIL_FITS
    from pipeline.data.resize import FITS

    assert set(FITS) == set(PIL_FITS) == set(vocabulary.FIT_MODES) == set(schema.FIT_MODES)


def test_channel_criteria_are_the_vocabulary():
    from pipeline.compress.channels import CRITERIA, SCORES

    assert set(SCORES) == set(vocabulary.CHANNEL_CRITERIA) == set(schema.CHANNEL_CRITERIA)
    assert CRITERIA == tuple(vocabulary.CHANNEL_CRITERIA.names())


def test_an_implementation_that_differs_from_its_vocabulary_fails():
    names = Registry("fit mode")
    names.register("resize", "stretch")
    with pytest.raises(ValueError, match=r"fit mode implementations \['crop'\] .* \(missing \['resize'\], "
                                         r"extra \['crop'\]"):
        vocabulary.check_implements(names, {"crop": None}, "here")
