"""Phrase tables of the rule-based CheXpert labeler (lower-case regular expressions, matched on words).

Written for this project (not taken from chexpert-labeler). Kinds of phrase:
- MENTIONS: a phrase that names the observation itself ("pleural effusion", "cardiomegaly").
- ANATOMY: an anatomical phrase whose observation depends on a nearby STATE word ("heart size is normal"
  -> Cardiomegaly 0, "widened mediastinum" -> Enlarged Cardiomediastinum 1).
- BLOCKERS: look-alikes that must not count ("pericardial effusion", "kerley b lines" is Edema, not a line).
- HEART_FAILURE: "chf" / "heart failure", used only by the Cardiomegaly fallback rule.
- triggers: negation / uncertainty cues, each acting forwards ("no ..."), backwards ("... is not seen") or
  both ("resolved"); PSEUDO cues look like negations but are not ("no change in the effusion").
- TERMINATORS, CLAUSE_PUNCTUATION and CLAUSE_END_AFTER end a clause: cues never act across them.
"""

from __future__ import annotations

MENTIONS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        r"widen(?:ed|ing) (?:of )?(?:the )?(?:superior )?(?:cardio)?mediastin(?:um|al)(?: silhouette| contours?)?",
        r"(?:cardio)?mediastinal (?:widening|enlargement)",
        r"enlarged (?:superior )?(?:cardio)?mediastin(?:um|al)\w*",
    ),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"cardiac (?:enlargement|hypertrophy)",
        r"enlarge(?:d|ment of the) heart",
        r"enlarged cardiac (?:silhouette|size|shadow|contours?)",
        r"enlargement of the cardiac (?:silhouette|shadow)",
    ),
    "Lung Opacity": (
        r"opacit(?:y|ies)",
        r"opacification",
        r"opacified",
        r"infiltrat(?:e|es|ion|ive)",
        r"densit(?:y|ies)",
        r"air[- ]?space (?:disease|process|filling)",
        r"ground[- ]glass",
        r"interstitial (?:markings|prominence|thickening|disease|pattern|abnormality|lung disease)",
        r"reticul(?:ar|onodular) (?:markings|pattern|changes)",
        r"increased (?:lung|interstitial) markings",
    ),
    "Lung Lesion": (
        r"nodul(?:e|es|arity)",
        r"nodular (?:opacit(?:y|ies)|densit(?:y|ies)|lesions?)",
        r"mass(?:es)?",
        r"(?:lung |pulmonary |cavitary |cavitating )?lesions?",
        r"tumou?rs?",
        r"neoplasms?",
        r"carcinoma",
        r"malignan(?:cy|t)",
        r"metasta(?:sis|ses|tic disease)",
        r"cavitation",
        r"cavit(?:y|ies)",
    ),
    "Edema": (
        r"edema",
        r"oedema",
        r"(?:pulmonary |vascular |venous )+congestion",
        r"congestive changes",
        r"vascular (?:engorgement|redistribution|prominence)",
        r"cephali[sz]ation",
        r"fluid overload",
        r"kerley (?:b )?lines?",
        r"(?:prominent|engorged|indistinct) (?:pulmonary )?vasculature",
    ),
    "Consolidation": (r"consolidat(?:ion|ions|ive|ed)",),
    "Pneumonia": (
        r"pneumonias?",
        r"bronchopneumonia",
        r"(?:infectious|infective|inflammatory) process(?:es)?",
        r"infections?",
        r"pneumonic",
        r"pneumonitis",
    ),
    "Atelectasis": (
        r"atelecta(?:sis|ses|tic)",
        r"(?:lobar|lobe|lung|segmental|subsegmental) collapse",
        r"collapse of the (?:\w+ ){0,3}(?:lobe|lung)",
        r"collapsed (?:lung|lobe)",
    ),
    "Pneumothorax": (r"(?:hydro)?pneumothora(?:x|ces)", r"ptx", r"pleural air(?: collection)?"),
    "Pleural Effusion": (
        r"(?:pleural )?effusions?",
        r"pleural fluid",
        r"hydrothorax",
        r"fluid in the (?:\w+ )?(?:pleural space|fissure)",
        r"blunt(?:ing|ed) (?:of )?(?:the )?(?:\w+ ){0,2}(?:costophrenic|cp) (?:angles?|sulc(?:us|i))",
        r"(?:costophrenic|cp) (?:angles?|sulc(?:us|i)) (?:is |are )?blunt(?:ed|ing)",
        r"layering fluid",
    ),
    "Pleural Other": (
        r"pleural (?:thickening|plaques?|scar(?:ring)?|calcifications?|fibrosis|reaction)",
        r"fibrothorax",
        r"pleural[- ]parenchymal scarring",
    ),
    "Fracture": (r"fractur(?:e|es|ed)", r"fx"),
    "Support Devices": (
        r"tubes?",
        r"catheters?",
        r"lines?",
        r"picc",
        r"pacemakers?",
        r"pacer",
        r"(?:pacing|pacer|pacemaker) leads?",
        r"leads",
        r"(?:sternotomy|sternal|surgical|epicardial|pacing|pacer) wires?",
        r"(?:surgical )?clips?",
        r"stents?",
        r"(?:prosthetic|mechanical|replaced|bioprosthetic) (?:valves?|aortic valve|mitral valve)",
        r"valve replacement",
        r"port-?a-?cath",
        r"(?:chest wall |subcutaneous |infusion |venous )?port",
        r"drains?",
        r"(?:support |monitoring |cardiac |implanted )?devices?",
        r"defibrillator",
        r"a?icd",
        r"hardware",
        r"intra-?aortic balloon pump",
        r"iabp",
        r"l?vad",
        r"coils?",
        r"cabg",
    ),
}

ANATOMY: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        r"cardiomediastinal(?: (?:silhouette|contours?|structures|size|shadow|width))?",
        r"mediastin(?:um|al)(?: (?:silhouette|contours?|structures|size|shadow|width))?",
    ),
    "Cardiomegaly": (
        r"heart(?: (?:size|shadow|contours?|silhouette))?",
        r"cardiac(?: (?:silhouette|size|shadow|contours?|diameter|dimensions))?",
    ),
}

# Nearby words that decide an ANATOMY phrase (the nearest one within the clause and the window wins).
STATES: dict[float, tuple[str, ...]] = {
    1.0: (
        r"enlarge(?:d|ment)",
        r"widen(?:ed|ing)",
        r"increased(?: in)?(?: size| width)?",
        r"large",
        r"big",
        r"dilated",
    ),
    0.0: (
        r"normal(?:ly)?(?: in)?(?: size| sized| caliber| configuration| contours?| limits)?",
        r"within normal limits",
        r"wnl",
        r"unremarkable",
        r"small",
    ),
    -1.0: (
        r"(?:at )?(?:the )?upper (?:limits?|range|end) of normal",
        r"top[- ]?normal",
        r"high[- ]normal",
        r"borderline(?: enlarged| size| cardiomegaly)?",
        r"(?:mildly |slightly )?prominent",
    ),
}

BLOCKERS: tuple[str, ...] = (
    r"pericardial effusions?",
    r"joint effusions?",
    r"(?:bone|osseous|lytic|sclerotic|blastic|skin) (?:lesions?|densit(?:y|ies))",
    r"pleural line",
    r"skin ?folds?(?: lines?)?",
    r"(?:azygo|fissure|fissural|septal|reference|mid-?clavicular) lines?",
    r"line of the \w+",
    r"breast (?:shadows?|tissue|implants?|densit(?:y|ies))",
    r"nipple shadows?",
    r"hiatal hernia",
    r"soft tissue densit(?:y|ies)",
    r"mass effect",
    r"body mass",
    r"bone mass",
)

HEART_FAILURE: tuple[str, ...] = (r"(?:congestive )?(?:heart|cardiac) failure", r"chf")

NEGATION_FORWARD: tuple[str, ...] = (
    r"no",
    r"not",
    r"without",
    r"nor",
    r"neither",
    r"absence of",
    r"absent",
    r"negative for",
    r"free of",
    r"clear of",
    r"no (?:radiographic |convincing |definite |acute |other |new |focal )*"
    r"(?:evidence|signs?|findings?) (?:of|for|to suggest)",
    r"(?:interval )?(?:resolution|removal|clearing) of",
    r"resolved",
    r"rather than",
    r"no longer(?: any)?",
)
NEGATION_BACKWARD: tuple[str, ...] = (
    r"(?:(?:is|are|was|were|has been|have been) )?(?:no longer|not) (?:\w+ly )?(?:seen|identified|visualized|visible|"
    r"appreciated|present|noted|demonstrated|evident|detected|apparent|observed|shown)",
    r"(?:(?:has|have) )?(?:resolved|cleared|disappeared)",
    r"(?:(?:has|have) been |was |were )?removed",
    r"(?:(?:is|are) )?absent",
    r"(?:(?:has|have) been |is |are )?ruled out",
    r"(?:is|are) negative",
    r"(?:(?:is|are) )?no longer present",
)
UNCERTAIN_FORWARD: tuple[str, ...] = (
    r"may",
    r"might",
    r"could",
    r"possibl[ey]",
    r"probabl[ey]",
    r"likely",
    r"presum(?:ed|ably)",
    r"questionable",
    r"question of",
    r"suspicious for",
    r"suspect(?:ed)?",
    r"concern(?:ing)? for",
    r"worrisome for",
    r"suggest(?:s|ive of|ing)?",
    r"(?:cannot|can not|can't|could not) (?:be )?(?:excluded?|ruled? out)",
    r"(?:difficult|hard) to (?:exclude|rule out)",
    r"rule out",
    r"r/o",
    r"(?:to )?(?:evaluate|assess) for",
    r"versus",
    r"vs\.?",
    r"differential(?: diagnosis)?(?: includes?| considerations? includes?)?",
    r"consider(?:ed)?",
    r"(?:may|might|could) (?:represent|reflect|be due to|indicate)",
    r"borderline",
    r"equivocal",
    r"indeterminate",
    r"uncertain",
    r"not certain",
)
UNCERTAIN_BACKWARD: tuple[str, ...] = (
    r"(?:(?:cannot|can not|can't|could not) be|(?:is |are )?not(?: entirely)?) (?:excluded|ruled out)",
    r"(?:is|are) (?:possible|suspected|questioned|not excluded)",
    r"versus",
    r"vs\.?",
)
PSEUDO: tuple[str, ...] = (
    r"no (?:significant |interval |appreciable |substantial |definite |major |marked |other )*"
    r"(?:change|increase|decrease)",
    r"without (?:significant |interval |appreciable )*change",
    r"not (?:significantly )?changed",
    r"not only",
    r"no further",
    r"gram negative",
    r"to suggest",
    r"not well (?:seen|visualized|assessed|evaluated)",
    r"not (?:be )?assessed",
)
# Words that only place a finding: a cue reaches across them for free ("... in the right lower zone cannot be
# excluded"), like list words.
LOCATION_WORDS: frozenset[str] = frozenset(
    {
        "left",
        "right",
        "bilateral",
        "bilaterally",
        "both",
        "upper",
        "lower",
        "mid",
        "middle",
        "zone",
        "zones",
        "lobe",
        "lobes",
        "lung",
        "lungs",
        "base",
        "bases",
        "basal",
        "basilar",
        "bibasilar",
        "apex",
        "apices",
        "apical",
        "side",
        "sided",
        "left-sided",
        "right-sided",
        "perihilar",
        "hilar",
        "retrocardiac",
        "lingula",
        "lingular",
        "field",
        "fields",
        "hemithorax",
        "segment",
        "posterior",
        "anterior",
        "lateral",
        "medial",
    }
)
TERMINATORS: tuple[str, ...] = (
    r"but",
    r"however",
    r"although",
    r"though",
    r"whereas",
    r"while",
    r"except(?: for)?",
    r"aside from",
    r"apart from",
    r"with the exception of",
    r"other than",
    r"there (?:is|are|has been|have been|was|were)",
    r"which",
    r"secondary to",
    r"due to",
    r"and (?:the|there)",
)
CLAUSE_PUNCTUATION: tuple[str, ...] = (r";", r":", r",\s*(?=(?:the|there)\b)")
# A clause also ends right after a verb that closes a statement, before a comma ("no effusion seen, dense nodule").
CLAUSE_END_AFTER: tuple[str, ...] = (
    r"\b(?:seen|identified|noted|present|demonstrated|visualized|evident|appreciated|detected)\s*,",
)
