"""The report contract, declared once: what a protected photo's report holds, for every reader.

:func:`core.protect.verify_photo` builds a :class:`PhotoReport` per photo (validated where
:func:`core.protect.protect_images` returns it); ``veil protect`` writes its report.json as a list of
:class:`PhotoEntry` (or :class:`PhotoError`); a worker stores a :class:`JobReport` on the job, which the
gateway publishes as the job's ``report`` (typed in its OpenAPI document) and the page reads.

Fields that a report leaves out (``faces_skipped`` when no face was skipped, ``note`` on a receipt of
faces, a face's ``landmarks``...) stay out when a model is serialised: a report's JSON is exactly the keys
it was built with. This module needs only pydantic (no torch): the service layer and the gateway import it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator


class ReportModel(BaseModel):
    """Base of the report models: unknown keys are refused; keys a report left out stay out of its JSON."""

    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _keys_as_built(self, handler: SerializerFunctionWrapHandler):
        # (No return annotation: the JSON schema stays the model's own.)
        data = handler(self)
        return {k: v for k, v in data.items() if k in self.model_fields_set}


class _LPIPSMeasured(ReportModel):
    """LPIPS is a number, or None with ``lpips_available`` False where it could not be measured (its weights
    are not installed: ``veil weights``). Reports of older versions said ``"lpips": "unavailable"``."""

    @model_validator(mode="before")
    @classmethod
    def _unavailable_is_none(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("lpips") == "unavailable":
            data = {**data, "lpips": None}
            if "lpips_available" in cls.model_fields:
                data["lpips_available"] = False
        return data


class ForgerNumbers(ReportModel):
    """One forger's numbers over the (face, edit) pairs measured."""

    success_rate: float | None = Field(description="share of the edits the protection broke (0..1)")
    distortion: float | None = Field(description="mean MSE between the edits of the protected and clean faces")
    nullification: float | None = Field(description="mean MSE between the edit of the protected face and the face")
    edit_blocked: float | None = Field(
        default=None, description="of the edits that work on the clean face (the evaluation classifier reads the "
        "target attribute clearly, by a logit of 1), the share that fail (read clearly away from it) or are "
        "visibly ruined on the protected one; None: none to judge")


class ConditionResult(ReportModel):
    """The forgers' success on the delivered photo after one channel condition (JPEG, resize, blur...)."""

    success_rate: float | None = Field(description="mean over the forgers")
    edit_blocked: float | None = Field(default=None, description="mean over the forgers")
    forgers: dict[str, ForgerNumbers]


class Verdict(ReportModel):
    """What a receipt means, in words (:func:`core.receipt.verdict`)."""

    level: Literal["protected", "partly", "not_protected"] = Field(
        description="protected: at least 80 % of the edits broken under every condition (and of the working ones, "
        "where the judge measured it, 80 % failed or ruined); partly: at least 20 % as delivered or under every "
        "condition; else not_protected")
    text: str = Field(description="the verdict and its numbers in a sentence or two, for the person it protects")


class Receipt(ReportModel):
    """What an attacker's forgers achieve on the delivered photo, under each condition measured."""

    conditions: dict[str, ConditionResult]
    min_success_rate: float | None = Field(description="the lowest success rate over the conditions")
    min_edit_blocked: float | None = Field(default=None, description="the lowest edit_blocked over the conditions")
    weakest: str | None = Field(description="the condition where it occurs")
    threshold: float = Field(description="MSE between edits above which an edit counts as broken")
    scope: Literal["faces", "whole_photo"] = Field(
        description="faces: measured on the attacker's crops of the faces; whole_photo: no face was found and the "
        "whole picture was protected and measured"
    )
    note: str | None = Field(default=None, description="with scope whole_photo: what the numbers do not show")
    verdict: Verdict | None = Field(default=None, description="what the numbers mean (absent from older reports)")


class FaceReport(_LPIPSMeasured):
    """One protected face."""

    box: list[float] = Field(description="x, y, w, h in pixels, as detected")
    score: float = Field(description="the detector's score")
    landmarks: dict[str, list[float]] | None = Field(default=None, description="eye (and other) points, when found")
    angle: float = Field(description="degrees the crop was rotated to level the eyes")
    within_budget: bool
    success_rate: float | None = Field(description="mean over the forgers, on the attacker's crop")
    forgers: dict[str, ForgerNumbers]
    redetected: bool | None = Field(default=None, description="found again on the delivered photo (with a receipt)")
    receipt_detector: str | None = Field(default=None, description="the detector whose crop the receipt measured")
    region: list[int] = Field(description="x0, y0, x1, y1: the pixels the protection may change")
    psnr: float | None
    ssim: float | None
    lpips: float | None


class PhotoReport(_LPIPSMeasured):
    """One protected photo: quality of the delivered file, the forgers' success on it, the receipt."""

    width: int
    height: int
    seconds: float = Field(description="protection time (per photo of a batch)")
    protection: Literal["faces", "whole_image", "no_face"]
    faces_found: int
    detector: str
    faces_skipped: int | None = Field(default=None, description="faces beyond max_faces (absent when none)")
    psnr: float | None = Field(description="dB, over the face regions (whole photo for whole_image)")
    ssim: float | None
    lpips: float | None = Field(description="None where nothing changed or LPIPS is not available")
    lpips_available: bool = Field(default=True, description="False: LPIPS could not be measured")
    linf: float = Field(description="largest change of a channel on [-1, 1], over the whole delivered photo")
    max_change_levels: int | None = Field(default=None, ge=0, le=255, description="the largest change of any "
                                          "colour channel in 8-bit levels of 255 (absent from older reports)")
    changed_share: float | None = Field(default=None, ge=0, le=1, description="the share of the photo's pixels "
                                        "changed at all (a face-only protection in PNG leaves every other pixel as "
                                        "it was; with lossy_output the compression's changes count too)")
    within_budget: bool = Field(description="the protection's budget held (before a lossy output encoding)")
    lossy_output: bool = Field(description="the numbers are of the JPEG/WebP file as decoded")
    faces: list[FaceReport]
    forgers: dict[str, ForgerNumbers] = Field(description="over all faces (the whole photo for whole_image)")
    receipt: Receipt | None = None
    report_seconds: float | None = Field(default=None, description="time spent measuring the report")


class Previews(ReportModel):
    """The preview images of a photo (with ``previews``): their file names among the outputs."""

    columns: list[str] = Field(description="the edits grid's columns: input, then the edited attributes")
    amplification: float = Field(description="gain of the perturbation image")
    forger: str = Field(description="the forger whose edits are shown")
    perturbation: str | None = None
    edits: str | None = None


class MinSuccess(ReportModel):
    """The outcome of a job's ``min_success`` requirement."""

    required: float
    met: bool
    attempts: int
    core_eps: float = Field(description="the budget of the last attempt, in the method's own units")


class WorkerPhotoReport(PhotoReport):
    """A photo's report as a worker keeps it: the core report and what the job asked for besides."""

    previews: Previews | None = None
    min_success: MinSuccess | None = None


class PhotoEntry(WorkerPhotoReport):
    """A protected photo as a report lists it: its file name (``name``, in the API and the CLI alike) and
    outcome with its report."""

    name: str = Field(description="the photo's file name (upload or archive entry)")
    index: int | None = Field(default=None, description="its place in the archive (worker)")
    status: Literal["ok"] | None = None
    output: str | None = Field(default=None, description="the protected file (None: not written, no face)")
    input: str | None = Field(default=None, description="the source path (CLI)")


class PhotoError(ReportModel):
    """A photo that could not be protected."""

    name: str
    index: int | None = None
    status: Literal["error"] | None = None
    input: str | None = Field(default=None, description="the source path (CLI)")
    error: str


class Summary(ReportModel):
    entries: int
    protected: int
    errors: int


class JobReport(ReportModel):
    """A finished job's ``report``: a photo job's entry, or an archive's summary and files (the details of
    an archive's photos are in its report.json and report.csv)."""

    summary: Summary
    photos: list[PhotoEntry | PhotoError] | None = None
    files: list[str] | None = Field(default=None, description="an archive's outputs")


def validated(model: type[ReportModel], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` checked against ``model`` and back as JSON types, with the keys it was built with (raises
    :class:`pydantic.ValidationError` where it does not fit the contract)."""
    return model.model_validate(data).model_dump(mode="json")


REPORT_MODELS: tuple[type[BaseModel], ...] = (JobReport, PhotoEntry, PhotoError, PhotoReport)
