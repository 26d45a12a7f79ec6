from holojax.models.holo_lm import HOLO_LM_PRESETS, HoloLM, HoloLMConfig  # noqa
