// comparison.html: per-class and per-long-tail-group F1 of several groups of runs (e.g. one per
// loss), mean ± std over their seeds, classes from head to tail. The data is the JSON in
// #mcmetrics-data, written by mlflow_mcmetrics.pages.
"use strict";

(() => {
  const { el, svgEl, format, color, tooltip, escape, sortableTable, legend } = Charts;
  const data = JSON.parse(document.getElementById("mcmetrics-data").textContent);
  const classes = data.classes;
  const rows = data.rows;
  const groupClasses = data.group_classes; // many-, medium-, few-shot: class keys, head first
  const GROUPS = Object.keys(groupClasses);
  const groupOf = new Map(GROUPS.flatMap((g) => groupClasses[g].map((c) => [c, g])));
  const meanStd = ([mean, std]) => (std ? `${format(mean, 3)} ± ${format(std, 3)}` : format(mean, 3));

  function barChart() {
    const width = Math.max(640, 60 + classes.length * (rows.length * 9 + 10));
    const height = 320;
    const margin = { left: 44, right: 10, top: 12, bottom: 70 };
    const band = (width - margin.left - margin.right) / classes.length;
    const bar = (band * 0.8) / rows.length;
    const y = (value) => height - margin.bottom - value * (height - margin.top - margin.bottom);
    const svg = svgEl("svg", { width, height, viewBox: `0 0 ${width} ${height}`, id: "bars" });
    // A shaded band behind each group's classes (they are contiguous: head to tail).
    GROUPS.forEach((g, i) => {
      const first = classes.findIndex((c) => groupOf.get(c) === g);
      const x = margin.left + first * band;
      svg.append(svgEl("rect", { x, y: margin.top, width: groupClasses[g].length * band,
        height: height - margin.top - margin.bottom, fill: i % 2 ? "#ffffff" : "#f1f3f5",
        "data-shot-group": g }));
      svg.append(svgEl("text", { x: x + 4, y: margin.top + 10 }, data.group_names[g]));
    });
    for (const value of [0, 0.25, 0.5, 0.75, 1]) {
      svg.append(svgEl("line", { x1: margin.left, x2: width - margin.right, y1: y(value),
        y2: y(value), stroke: "#e4e7eb" }));
      svg.append(svgEl("text", { x: margin.left - 6, y: y(value) + 4, "text-anchor": "end" },
        value.toFixed(2)));
    }
    classes.forEach((name, i) => {
      const x0 = margin.left + i * band + band * 0.1;
      rows.forEach((row, g) => {
        const [mean, std] = row.f1[name];
        const x = x0 + g * bar;
        const rect = svgEl("rect", { x, y: y(mean), width: Math.max(bar - 1, 1),
          height: y(0) - y(mean), fill: color(g), "data-group": row.group, "data-class": name,
          "data-mean": mean });
        rect.addEventListener("mousemove", (event) => tooltip.show(event,
          `${escape(row.group)}, class <b>${escape(name)}</b>: F1 ${meanStd([mean, std])} ` +
          `over ${row.runs} run(s)`));
        rect.addEventListener("mouseleave", () => tooltip.hide());
        svg.append(rect);
        if (std) {
          svg.append(svgEl("line", { x1: x + bar / 2, x2: x + bar / 2, y1: y(Math.min(1, mean + std)),
            y2: y(Math.max(0, mean - std)), stroke: "#1f2933" }));
        }
      });
      const label = svgEl("text", { x: x0 + (band * 0.8) / 2, y: height - margin.bottom + 12,
        "text-anchor": "end", transform: `rotate(-45 ${x0 + (band * 0.8) / 2} ` +
          `${height - margin.bottom + 12})` }, name.length > 14 ? `${name.slice(0, 13)}…` : name);
      label.append(svgEl("title", {}, data.train_counts ?
        `${name}: ${data.train_counts[name]} training samples` : name));
      svg.append(label);
    });
    svg.append(svgEl("text", { x: 12, y: height / 2 - 20, transform: `rotate(-90 12 ${height / 2 - 20})`,
      "text-anchor": "middle" }, `${data.prefix}F1`));
    return svg;
  }

  const columns = [{ key: "group", label: data.group_by, format: (v) => v },
    { key: "runs", label: "runs" },
    { key: "f1_macro", label: "macro F1", format: (v, row) => meanStd(row.f1_macro_pair) },
    ...GROUPS.map((g) => ({ key: `f1_${g}`, label: `${data.group_names[g]} F1`,
      title: `mean F1 of the ${groupClasses[g].length} ${data.group_names[g]} classes ` +
        `(${groupClasses[g].join(", ")}) per run, then mean ± std over the runs`,
      format: (v, row) => meanStd(row.group_f1[g]) })),
    ...data.scores.map((name) => ({ key: name, label: data.score_names[name],
      format: (v, row) => meanStd(row.score_pairs[name]) })),
    ...classes.map((name) => ({ key: `f1/${name}`, label: `F1 ${name}`,
      format: (v, row) => meanStd(row.f1[name]) }))];
  const tableRows = rows.map((row) => {
    const flat = { ...row, f1_macro_pair: row.f1_macro, score_pairs: row.scores,
      f1_macro: row.f1_macro[0] };
    for (const g of GROUPS) flat[`f1_${g}`] = row.group_f1[g][0];
    for (const name of data.scores) flat[name] = row.scores[name][0];
    for (const name of classes) flat[`f1/${name}`] = row.f1[name][0];
    return flat;
  });

  const runList = el("ul", { id: "runs" }, rows.map((row) => el("li", {}, [
    el("b", {}, row.group), `: ${(data.run_ids[row.group] || []).join(", ")}`])));

  document.getElementById("app").append(
    el("h1", {}, data.title),
    el("div", { class: "subtitle" }, `${rows.length} ${data.group_by} values · ` +
      `${classes.length} classes, head → tail` +
      (data.train_counts ? " by training samples" : "") +
      (GROUPS.length ? ` (${GROUPS.map((g) => `${groupClasses[g].length} ` +
        data.group_names[g]).join(", ")})` : "") +
      ` · ${data.prefix ? data.prefix.replace(/_$/, "") : "training"} split`),
    el("section", { class: "panel wide" }, [el("h2", {}, "F1 per class"), barChart(),
      legend(rows.map((row, g) => ({ name: row.group, color: color(g) })))]),
    el("section", { class: "panel wide" }, [el("h2", {}, "Scores (mean ± std over runs)"),
      sortableTable(columns, tableRows, { id: "comparison", sortKey: "f1_macro" })]),
    el("section", { class: "panel wide" }, [el("h2", {}, "Runs"), runList]),
  );
})();
