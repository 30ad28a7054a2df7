"""Datasets: the vendored Graduate Admission CSV, standardization, intercept, CSV uploads and their errors."""

import hashlib
from fractions import Fraction

import numpy as np
import pytest

from backend import datasets
from backend.errors import ConfigError


def test_graduate_admission_is_the_vendored_file():
    digest = hashlib.sha256(datasets.GRADUATE_ADMISSION.read_bytes()).hexdigest()
    assert digest == "4d46ee6b89402ed92c37120672cef85379876ccb72ecb80f58120d7202645dc9"
    d = datasets.graduate_admission()
    assert d.X.shape == (500, 7) and d.target_name == "Chance of Admit"
    assert d.feature_names == ("GRE Score", "TOEFL Score", "University Rating", "SOP", "LOR", "CGPA", "Research")
    assert d.X[0, 5] == Fraction("9.65") and d.y[0] == Fraction("0.92") and d.exact


def test_standardize_and_intercept():
    d = datasets.graduate_admission()
    X, y, exact = datasets.design_matrix(d, standardize=True, intercept=True)
    assert not exact and X.shape == (500, 8)
    np.testing.assert_allclose(X[:, :7].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(X[:, :7].std(0, ddof=0), 1, rtol=1e-12)
    assert np.all(X[:, 7] == 1)
    Xe, _, exact = datasets.design_matrix(d, standardize=False, intercept=True)
    assert exact and Xe[3, 7] == 1 and Xe[3, 0] == 322


@pytest.mark.parametrize("text,message", [
    ("a,b\n1,2\n", "at least 2 data rows"),
    ("a,b\n1,x\n2,3\n", "'b' is not numeric"),
    ("a,b\n1,nan\n2,3\n", "non-finite"),
    ("a,b\n1,\n2,3\n", "not numeric"),
    ("a,b\n1,2,3\n2,3\n", "row 2 has 3 cells"),
    ("", "empty"),
    ("a,a\n1,2\n3,4\n", "repeated"),
])
def test_csv_errors(text, message):
    with pytest.raises(ConfigError) as err:
        datasets.parse_csv_text(text)
    assert message in str(err.value)


def test_csv_target_choice_and_missing_target():
    d = datasets.parse_csv_text("x1,y,x2\n1,2,3\n4,5,6\n7,8,9\n", target="y")
    assert d.feature_names == ("x1", "x2") and list(d.y) == [2, 5, 8]
    with pytest.raises(ConfigError, match="not found"):
        datasets.parse_csv_text("x1,y\n1,2\n3,4\n", target="z")


def test_synthetic_is_seeded():
    a, b = datasets.synthetic(50, 3, 0.1, 7), datasets.synthetic(50, 3, 0.1, 7)
    assert np.array_equal(a.X.astype(float), b.X.astype(float)) and a.X.shape == (50, 3)
