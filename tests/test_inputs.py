import numpy as np
import pytest
from PIL import Image

from lvlm_kit.inputs import chat_prompt, load_image, prepare_inputs


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_non_image_file_names_the_path(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("hello")
    with pytest.raises(ValueError, match="notes.jpg' is not an image file"):
        load_image(p)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    gray = Image.fromarray(np.full((4, 5), 77, np.uint8), "L")
    gray.save(tmp_path / "g.png")
    im = load_image(tmp_path / "g.png")
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (77, 77, 77)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red; the rest fully transparent
    im = load_image(rgba)
    assert im.getpixel((0, 0)) == (255, 0, 0) and im.getpixel((1, 1)) == (255, 255, 255)


def test_arrays():
    assert load_image(np.ones((3, 3), np.float32)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.zeros((3, 3, 1), np.uint8)).size == (3, 3)
    with pytest.raises(ValueError, match=r"shape \(3, 3, 5\)"):
        load_image(np.zeros((3, 3, 5), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(np.full((3, 3), 7.0))
    with pytest.raises(ValueError, match="type int"):
        load_image(3)


def test_prompt_template(tiny_llava, tiny_llama):
    text = chat_prompt(tiny_llava, "Describe the image.", with_image=True)
    assert text == "USER: <image>\nDescribe the image. ASSISTANT:"
    assert chat_prompt(tiny_llama, "hi", with_image=False) == "USER: hi ASSISTANT:"
    with pytest.raises(ValueError, match="non-empty"):
        chat_prompt(tiny_llava, "  ", with_image=True)


def test_text_model_rejects_image(tiny_llama, image):
    with pytest.raises(ValueError, match="text-only language model; pass image=None"):
        prepare_inputs(tiny_llama, image, "Describe.")


def test_missing_chat_template():
    from conftest import make_tiny_llama, make_tiny_llava

    text = make_tiny_llama()
    text.processor.chat_template = None  # like lmsys/vicuna-7b-v1.5
    with pytest.warns(UserWarning, match="Vicuna v1.1"):
        assert chat_prompt(text, "hi", with_image=False) == "USER: hi ASSISTANT:"
    vision = make_tiny_llava()
    vision.processor.chat_template = None
    with pytest.raises(ValueError, match="the processor has no chat template"):
        chat_prompt(vision, "hi", with_image=True)


def test_image_inputs(tiny_llava, image):
    inputs, _ = prepare_inputs(tiny_llava, image, "Describe the image.")
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    assert int((inputs["input_ids"] == 4).sum()) == 16
    assert inputs["input_ids"][0, 0].item() == tiny_llava.tokenizer.bos_token_id
