"""dcx.core: the foundation every other part of dcx stands on; it imports nothing else of dcx.

- ``errors``     DcxError (a plain exception) and the click classes that print it as one line
- ``files``      atomic writes, strict JSON, usable cores
- ``devices``    auto / cpu / gpu, resolved once
- ``preprocess`` the input contract (unit gray, letterbox, normalisation constants)
- ``formats``    file formats by magic bytes
- ``dicom``      DICOM header rules and the pixel transform
- ``reader``     the reference reader: any supported file as unit gray
- ``registry``   the architectures dcx trains, as data (names, weights, where the trunk ends)
- ``models``     DcxNet, built from the registry: probabilities, CAM and OOD score from one forward pass
- ``card``       the model card (JSON; needs no PyTorch)
- ``checkpoint`` the checkpoint file and the one checkpoint-to-model loader
- ``artefact``   what travels with an exported model: tensor names, sidecar, plan compatibility
- ``metrics``    screening metrics and their confidence intervals
- ``compare``    reference vs candidate: deltas, agreement, gates
- ``progress``   progress lines on a terminal and in logs
"""
