import pytest

from p3d_keras.core.checks import check_choice, expect


def test_expect_names_what_was_expected_and_every_value_received():
    expect(True, "anything", x=1)
    with pytest.raises(ValueError, match=r"^Expected fps to be positive or None. Received: fps=-1, size=\(1, 2\)$"):
        expect(False, "fps to be positive or None", fps=-1, size=(1, 2))


def test_check_choice_lists_the_choices():
    check_choice("graph", "caffe", ("caffe", "pytorch"))
    with pytest.raises(ValueError, match=r"Invalid graph. Expected one of \['caffe', 'pytorch'\]. Received: graph='tf'"):
        check_choice("graph", "tf", ("caffe", "pytorch"))
