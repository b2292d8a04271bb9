// mcmetrics/dashboard.html: one run's per-class scores, confusion matrices and curves, with an
// epoch slider. The data is the JSON in #mcmetrics-data, written by mlflow_mcmetrics.pages.
"use strict";

(() => {
  const { el, svgEl, format, color, tooltip, escape, lineChart, sortableTable, legend } = Charts;
  const data = JSON.parse(document.getElementById("mcmetrics-data").textContent);
  const names = data.classes;
  const labels = data.labels; // the scored class indices; per-class arrays follow this order
  const epochs = data.epochs;
  const numClasses = names.length;
  const multilabel = data.task === "multilabel";
  const TABLE_MATRIX_MAX = 30; // beyond this the matrix is a canvas without per-cell text
  const CURVES_MAX = 20; // curves drawn at once
  const METRICS = [["f1", "F1"], ["precision", "precision"], ["recall", "recall"],
    ["ap", "AP"], ["roc_auc", "ROC AUC"]].filter(([key]) => key in epochs[epochs.length - 1].scores);
  const AVERAGES = [["f1_macro", "macro F1"], ["f1_micro", "micro F1"],
    ["f1_weighted", "weighted F1"], ["map", "mAP"], ["roc_auc_macro", "macro ROC AUC"],
    ["balanced_accuracy", "balanced accuracy"], ["mcc", "MCC"], ["cohen_kappa", "kappa"],
    ["ece", "ECE"], ["gmean", "G-mean"], ["f1_worst", "worst-class F1"],
    ["recall_worst", "worst-class recall"], ["f1_worst_10pct", "worst-10% F1"],
    ["classes_recall_0", "classes at recall 0"], ["f1_many", "many-shot F1"],
    ["f1_medium", "medium-shot F1"], ["f1_few", "few-shot F1"], ["recall_many", "many-shot recall"],
    ["recall_medium", "medium-shot recall"], ["recall_few", "few-shot recall"]];

  // Long-tail groups: many-, medium- and few-shot classes by training samples, when known.
  const groups = data.groups;
  const GROUP_NAMES = { many: "many-shot", medium: "medium-shot", few: "few-shot" };
  const GROUP_COLOURS = { many: "#1f77b4", medium: "#2ca02c", few: "#c2410c" };
  const GROUPS = groups ? Object.keys(GROUP_NAMES).filter((g) => groups.sizes[g] > 0) : [];
  const groupOf = (label) => (groups ? groups.of_class[label] : "");
  const few = (label) => groupOf(label) === "few";
  const position = new Map(labels.map((label, i) => [label, i]));

  // -- controls ---------------------------------------------------------------------------
  const slider = el("input", { id: "epoch", type: "range", min: 0, max: epochs.length - 1,
    value: epochs.length - 1, step: 1, "aria-label": "epoch" });
  const epochLabel = el("b", { id: "epoch-label" });
  const play = el("button", { id: "play", type: "button" }, "▶ play");
  const metricSelect = el("select", { id: "metric" },
    METRICS.map(([key, label]) => el("option", { value: key }, label)));
  const search = el("input", { id: "search", type: "search", placeholder: "class name…",
    size: 16 });
  const focus = el("select", { id: "focus" }, [
    el("option", { value: "all" }, "all classes"),
    el("option", { value: "best" }, "10 best"),
    el("option", { value: "worst" }, "10 worst"),
    ...GROUPS.map((g) => el("option", { value: g }, `${GROUP_NAMES[g]} (${groups.sizes[g]})`)),
  ]);
  const matrixMode = el("select", { id: "matrix-mode" }, [
    el("option", { value: "counts" }, "counts"),
    el("option", { value: "normalised" }, "row-normalised"),
  ]);
  const curveSelect = el("select", { id: "curve" }, [
    el("option", { value: "pr" }, "precision-recall"),
    el("option", { value: "roc" }, "ROC"),
    el("option", { value: "reliability" }, "reliability"),
  ]);

  const app = document.getElementById("app");
  const averagesBox = el("div", { class: "averages", id: "averages" });
  const matrixBox = el("div", { id: "matrix-box" });
  const curvesBox = el("div", { id: "curves-box" });
  const pairsBox = el("div", { id: "pairs-box" });
  const epochsBox = el("div", { id: "over-epochs" });
  const groupsBox = el("div", { id: "groups-over-epochs" });
  const tableBox = el("div", { id: "classes-box" });
  app.append(
    el("h1", {}, data.title),
    el("div", { class: "subtitle" }, `${data.split === "val" ? "validation" : "training"} split · ` +
      `${data.task} · ${numClasses} classes · ${epochs.length} epochs logged` +
      (data.ignore_class !== null ? ` · class ${names[data.ignore_class]} left out` : "") +
      groupingNote()),
    el("div", { class: "controls" }, [
      el("label", {}, ["epoch", slider, epochLabel]), play,
      el("label", {}, ["score", metricSelect]),
      el("label", {}, ["classes", focus]),
      el("label", {}, ["search", search]),
    ]),
    averagesBox,
    el("div", { class: "grid" }, [
      el("section", { class: "panel" }, [el("h2", {}, "Confusion matrix"),
        el("label", { class: "note" }, ["show ", matrixMode]), matrixBox]),
      el("section", { class: "panel" }, [el("h2", {}, "Curves"),
        el("label", { class: "note" }, ["curve ", curveSelect]), curvesBox]),
      el("section", { class: "panel" }, [el("h2", {}, "Most confused pairs"), pairsBox]),
      el("section", { class: "panel" }, [el("h2", { id: "over-epochs-title" }), epochsBox]),
      GROUPS.length ? el("section", { class: "panel" }, [el("h2", { id: "groups-title" }),
        groupsBox]) : null,
      el("section", { class: "panel wide" }, [el("h2", {}, "Per class"), tableBox]),
    ]),
  );

  function groupingNote() {
    if (!groups) return "";
    const [low, high] = groups.thresholds;
    const sizes = GROUPS.map((g) => `${groups.sizes[g]} ${GROUP_NAMES[g]}`).join(", ");
    return ` · ${sizes} classes (` + (groups.rule === "thresholds" ?
      `training samples: many > ${high}, medium ${low}–${high}, few < ${low})` :
      "thirds of the classes by training samples)");
  }

  // -- state helpers ----------------------------------------------------------------------
  const record = () => epochs[Number(slider.value)];
  const metric = () => metricSelect.value;

  function score(rec, key, label) {
    const values = rec.scores[key];
    return values ? values[position.get(label)] : null;
  }

  /** The scored classes the controls select, in class order. */
  function visibleLabels() {
    const needle = search.value.trim().toLowerCase();
    let shown = labels.filter((label) => names[label].toLowerCase().includes(needle));
    if (focus.value in GROUP_NAMES) shown = shown.filter((label) => groupOf(label) === focus.value);
    if (focus.value === "best" || focus.value === "worst") {
      const rec = record();
      const sign = focus.value === "best" ? -1 : 1;
      shown = shown.filter((label) => score(rec, metric(), label) !== null)
        .sort((a, b) => sign * (score(rec, metric(), a) - score(rec, metric(), b)))
        .slice(0, 10).sort((a, b) => a - b);
    }
    return shown;
  }

  /** The matrix of a record as rows of numbers: C x C, or C x [tn, fp, fn, tp] multilabel. */
  function matrixOf(rec) {
    const width = multilabel ? 4 : numClasses;
    const rows = Array.from({ length: numClasses }, () => new Float64Array(width));
    for (let i = 0; i < rec.matrix.length; i += 2) {
      const cell = rec.matrix[i];
      rows[Math.floor(cell / width)][cell % width] = rec.matrix[i + 1];
    }
    return rows;
  }

  // -- panels -----------------------------------------------------------------------------
  function renderAverages(rec) {
    averagesBox.replaceChildren(...AVERAGES.filter(([key]) => key in rec.averages).map(
      ([key, label]) => el("span", { "data-key": key }, [`${label} `,
        el("b", {}, format(rec.averages[key]))])));
  }

  function cellColour(value, max) {
    const t = max > 0 ? Math.sqrt(value / max) : 0;
    const channel = (a, b) => Math.round(a + (b - a) * t);
    return [channel(255, 8), channel(255, 69), channel(255, 148)];
  }

  const NO_MATRIX = "Not kept at this many classes: the run counts per-class true positives, " +
    "predictions and samples only (every score in the table is exact).";

  function renderMatrix(rec) {
    if (!rec.matrix) {
      matrixBox.replaceChildren(el("p", { class: "note" }, NO_MATRIX));
      return;
    }
    const rows = matrixOf(rec);
    const shown = visibleLabels();
    const normalised = matrixMode.value === "normalised";
    if (multilabel) {
      matrixBox.replaceChildren(sortableTable(
        [{ key: "name", label: "label", format: (v) => v }, { key: "tn", label: "tn" },
          { key: "fp", label: "fp" }, { key: "fn", label: "fn" }, { key: "tp", label: "tp" }],
        shown.map((label) => {
          const [tn, fp, fn, tp] = rows[label];
          return { name: names[label], tn, fp, fn, tp };
        }), { id: "matrix" }));
      return;
    }
    const totals = rows.map((row) => row.reduce((a, b) => a + b, 0));
    const value = (r, c) => (normalised ? (totals[r] ? rows[r][c] / totals[r] : 0) : rows[r][c]);
    let max = 0;
    for (const r of shown) for (const c of shown) max = Math.max(max, value(r, c));
    const describe = (r, c) => `true <b>${escape(names[r])}</b>, predicted ` +
      `<b>${escape(names[c])}</b>: ${format(rows[r][c])} of ${format(totals[r])} ` +
      `(${totals[r] ? (100 * rows[r][c] / totals[r]).toFixed(1) : "0.0"}% of the true class)`;
    if (shown.length <= TABLE_MATRIX_MAX) {
      const table = el("table", { class: "matrix", id: "matrix" });
      table.append(el("tr", {}, [el("th", {}, "true \\ predicted"),
        ...shown.map((c) => el("th", { class: "column", title: names[c] }, names[c]))]));
      for (const r of shown) {
        table.append(el("tr", {}, [el("th", { title: names[r] }, names[r]), ...shown.map((c) => {
          const [red, green, blue] = cellColour(value(r, c), max);
          const dark = red < 140;
          return el("td", {
            "data-row": r, "data-column": c,
            style: `background:rgb(${red},${green},${blue});color:${dark ? "#fff" : "#1f2933"}`,
            onmousemove: (event) => tooltip.show(event, describe(r, c)),
            onmouseleave: () => tooltip.hide(),
          }, normalised ? value(r, c).toFixed(2) : format(rows[r][c]));
        })]));
      }
      matrixBox.replaceChildren(table, el("p", { class: "note" },
        "rows: true class, columns: predicted (as scikit-learn)"));
      return;
    }
    // Many classes: one pixel per cell, scaled up; hover names the cell.
    const size = shown.length;
    const image = new ImageData(size, size);
    shown.forEach((r, i) => shown.forEach((c, j) => {
      const [red, green, blue] = cellColour(value(r, c), max);
      image.data.set([red, green, blue, 255], 4 * (i * size + j));
    }));
    const pixels = el("canvas", { width: size, height: size });
    pixels.getContext("2d").putImageData(image, 0, 0);
    const side = Math.max(size, Math.min(600, size * 8));
    const canvas = el("canvas", { class: "matrix", id: "matrix", width: side, height: side,
      "data-epoch": rec.epoch });
    const context = canvas.getContext("2d");
    context.imageSmoothingEnabled = false;
    context.drawImage(pixels, 0, 0, side, side);
    canvas.addEventListener("mousemove", (event) => {
      const box = canvas.getBoundingClientRect();
      const i = Math.floor(((event.clientY - box.top) / box.height) * size);
      const j = Math.floor(((event.clientX - box.left) / box.width) * size);
      if (i >= 0 && j >= 0 && i < size && j < size) tooltip.show(event, describe(shown[i], shown[j]));
    });
    canvas.addEventListener("mouseleave", () => tooltip.hide());
    matrixBox.replaceChildren(canvas, el("p", { class: "note" },
      `${size} classes, one pixel per cell (hover for counts); rows: true, columns: predicted`));
  }

  function renderPairs(rec) {
    if (multilabel) {
      pairsBox.replaceChildren(el("p", { class: "note" }, "Not defined for multilabel outputs."));
      return;
    }
    if (!rec.matrix) {
      pairsBox.replaceChildren(el("p", { class: "note" }, NO_MATRIX));
      return;
    }
    const scored = new Set(labels);
    const totals = new Float64Array(numClasses);
    const pairs = [];
    for (let i = 0; i < rec.matrix.length; i += 2) {
      const r = Math.floor(rec.matrix[i] / numClasses);
      totals[r] += rec.matrix[i + 1];
    }
    for (let i = 0; i < rec.matrix.length; i += 2) {
      const r = Math.floor(rec.matrix[i] / numClasses);
      const c = rec.matrix[i] % numClasses;
      if (r !== c && scored.has(r) && scored.has(c)) pairs.push([r, c, rec.matrix[i + 1]]);
    }
    pairs.sort((a, b) => b[2] - a[2]);
    pairsBox.replaceChildren(sortableTable(
      [{ key: "true", label: "true", format: (v) => v },
        { key: "predicted", label: "predicted as", format: (v) => v },
        { key: "count", label: "count" },
        { key: "share", label: "share of true", format: (v) => `${(100 * v).toFixed(1)}%` }],
      pairs.slice(0, 10).map(([r, c, count]) => ({ true: names[r], predicted: names[c], count,
        share: totals[r] ? count / totals[r] : 0 })), { id: "pairs", sortKey: "count" }));
  }

  function curveRecord() {
    for (let i = Number(slider.value); i >= 0; i--) if (epochs[i].curves) return epochs[i];
    return null;
  }

  function renderCurves() {
    const rec = curveRecord();
    if (!rec) {
      curvesBox.replaceChildren(el("p", { class: "note" },
        "No curves up to this epoch (curves are kept for the epochs that log artifacts)."));
      return;
    }
    let shown = visibleLabels();
    if (shown.length > CURVES_MAX) {
      const key = metric();
      const ranked = shown.filter((l) => score(rec, key, l) !== null)
        .sort((a, b) => score(rec, key, b) - score(rec, key, a));
      const half = CURVES_MAX / 2;
      shown = [...ranked.slice(0, half), ...ranked.slice(-half)];
    }
    const kind = curveSelect.value;
    const curves = rec.curves[kind];
    const series = shown.map((label, i) => {
      const points = kind === "reliability" ? {
        xs: curves.centres, ys: curves.fractions[position.get(label)],
      } : { xs: curves[position.get(label)][0], ys: curves[position.get(label)][1] };
      const key = kind === "roc" ? "roc_auc" : "ap";
      return { ...points, name: names[label], color: color(i),
        className: few(label) ? "tail" : "",
        title: `${names[label]}: ${kind === "reliability" ? "reliability" :
          `${key === "ap" ? "AP" : "ROC AUC"} ${format(score(rec, key, label))}`}` };
    });
    const axes = { pr: ["recall", "precision"], roc: ["false positive rate", "true positive rate"],
      reliability: ["score for the class (bin centre)", "fraction of positives"] }[kind];
    const chart = lineChart({ series, xDomain: [0, 1], yDomain: [0, 1], xLabel: axes[0],
      yLabel: axes[1], diagonal: kind !== "pr" });
    const note = el("p", { class: "note", id: "curves-epoch" }, `epoch ${rec.epoch}` +
      (shown.length < visibleLabels().length ? `; the ${CURVES_MAX / 2} best and worst by ` +
        `${metric()} of ${visibleLabels().length}` : "") + (groups ? "; dashed: few-shot classes" : ""));
    curvesBox.replaceChildren(chart, note,
      legend(series.map((s) => ({ name: s.name, color: s.color }))));
  }

  function epochAxis() {
    const xs = epochs.map((rec) => rec.epoch);
    const first = xs[0];
    const last = Math.max(xs[xs.length - 1], first + 1);
    const step = Math.max(1, Math.ceil((last - first) / 10));
    const xTicks = [];
    for (let tick = first; tick <= last; tick += step) xTicks.push(tick);
    return { xs, xDomain: [first, last], xTicks };
  }

  function renderOverEpochs() {
    const key = metric();
    const label = METRICS.find(([k]) => k === key)[1];
    document.getElementById("over-epochs-title").textContent = `${label} by class over epochs`;
    const { xs, xDomain, xTicks } = epochAxis();
    const shown = visibleLabels();
    const series = shown.map((c, i) => ({
      xs, ys: epochs.map((rec) => score(rec, key, c)), name: names[c],
      color: groups ? GROUP_COLOURS[groupOf(c)] || "#9aa5b1" : color(i),
      className: few(c) ? "tail" : (shown.length > 30 ? "dim" : ""),
      title: `${names[c]}${groups ? ` (${GROUP_NAMES[groupOf(c)]})` : ""}: ${label} ` +
        `${format(score(record(), key, c))} at epoch ${record().epoch}`,
    }));
    const chart = lineChart({ series, xDomain, xTicks, xLabel: "epoch", yLabel: label,
      width: 760, marker: record().epoch });
    epochsBox.replaceChildren(chart, el("p", { class: "note" },
      `${shown.length} classes; hover a line for its name` +
      (groups ? "; coloured by group, few-shot dashed" : "")),
    groups ? legend(GROUPS.map((g) => ({ name: GROUP_NAMES[g], color: GROUP_COLOURS[g] }))) : "");
  }

  /** The mean of ``key`` over a group's scored classes with samples in the split: for F1 and
   * recall the run's logged f1_many … recall_few. */
  function groupMean(rec, key, group) {
    const values = labels.filter((c) => groupOf(c) === group && score(rec, "support", c) > 0)
      .map((c) => score(rec, key, c)).filter((value) => value !== null);
    return values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;
  }

  function renderGroups() {
    if (!GROUPS.length) return;
    const key = metric();
    const label = METRICS.find(([k]) => k === key)[1];
    document.getElementById("groups-title").textContent = `${label} by group over epochs`;
    const { xs, xDomain, xTicks } = epochAxis();
    const series = GROUPS.map((g) => {
      const ys = epochs.map((rec) => groupMean(rec, key, g));
      return { xs, ys, name: GROUP_NAMES[g], color: GROUP_COLOURS[g],
        className: g === "few" ? "tail" : "",
        title: `${GROUP_NAMES[g]} (${groups.sizes[g]} classes): ${label} ` +
          `${format(ys[Number(slider.value)])} at epoch ${record().epoch}` };
    });
    const chart = lineChart({ series, xDomain, xTicks, xLabel: "epoch", yLabel: label,
      width: 560, marker: record().epoch });
    groupsBox.replaceChildren(chart, legend(series.map((s) => ({ name: s.name, color: s.color }))),
      el("p", { class: "note" }, `mean ${label} of each group's classes with samples in the ` +
        "split (their macro average, as the logged f1_many … recall_few)"));
  }

  function renderTable(rec) {
    const shown = visibleLabels();
    const columns = [{ key: "name", label: "class", format: (v) => v }];
    if (groups) {
      columns.push({ key: "group", label: "group", format: (v) => GROUP_NAMES[v] || "" },
        { key: "training", label: "training samples" });
    }
    columns.push({ key: "support", label: "support",
      format: (v) => (v === 0 ? "0 (no samples)" : format(v)) });
    for (const [key, label] of METRICS) columns.push({ key, label });
    const thresholds = rec.thresholds;
    if (thresholds) {
      columns.push({ key: "threshold", label: "F1-optimal threshold" },
        { key: "f1_at_threshold", label: "F1 there" });
    }
    const rows = shown.map((c) => {
      const row = { name: names[c], index: c, support: score(rec, "support", c) };
      if (groups) {
        row.group = groupOf(c);
        row.training = groups.counts[c];
      }
      for (const [key] of METRICS) row[key] = score(rec, key, c);
      if (thresholds && thresholds.labels.includes(c)) {
        const i = thresholds.labels.indexOf(c);
        row.threshold = thresholds.values[i];
        row.f1_at_threshold = thresholds.f1[i];
      }
      return row;
    });
    tableBox.replaceChildren(sortableTable(columns, rows, { id: "classes", sortKey: "name",
      descending: false, rowClass: (row) => (groups ? `group-${row.group}` : "") }));
  }

  function render() {
    const rec = record();
    epochLabel.textContent = `epoch ${rec.epoch}`;
    renderAverages(rec);
    renderMatrix(rec);
    renderCurves();
    renderPairs(rec);
    renderOverEpochs();
    renderGroups();
    renderTable(rec);
  }

  let timer = null;
  play.addEventListener("click", () => {
    if (timer) {
      clearInterval(timer);
      timer = null;
      play.textContent = "▶ play";
      return;
    }
    if (Number(slider.value) === epochs.length - 1) slider.value = 0;
    play.textContent = "❚❚ pause";
    timer = setInterval(() => {
      if (Number(slider.value) >= epochs.length - 1) {
        play.click();
        return;
      }
      slider.value = Number(slider.value) + 1;
      render();
    }, 700);
  });
  for (const control of [slider, metricSelect, focus, matrixMode, curveSelect]) {
    control.addEventListener("input", render);
  }
  search.addEventListener("input", render);
  render();
})();
