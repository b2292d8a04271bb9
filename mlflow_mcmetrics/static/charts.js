// Small drawing helpers shared by dashboard.js and comparison.js: DOM and SVG elements,
// number formatting, colours, a tooltip, line and bar charts, sortable tables.
// No dependencies and no network: the pages must work inside the MLflow UI's sandboxed iframe.
"use strict";

const Charts = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  function el(tag, attributes = {}, children = []) {
    const node = document.createElement(tag);
    setAttributes(node, attributes);
    for (const child of [].concat(children)) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : document.createTextNode(String(child)));
      }
    }
    return node;
  }

  function svgEl(tag, attributes = {}, children = []) {
    const node = document.createElementNS(SVG, tag);
    setAttributes(node, attributes);
    for (const child of [].concat(children)) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : document.createTextNode(String(child)));
      }
    }
    return node;
  }

  function setAttributes(node, attributes) {
    for (const [name, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : value);
    }
  }

  /** A number as the page shows it: ``digits`` decimals, integers as integers, "–" for null. */
  function format(value, digits = 4) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    return Number.isInteger(value) ? String(value) : value.toFixed(digits);
  }

  function color(index) {
    if (index < PALETTE.length) return PALETTE[index];
    return `hsl(${(index * 137.508) % 360}, 55%, 45%)`;
  }

  const tooltip = {
    node: null,
    show(event, html) {
      this.node = this.node || document.getElementById("tooltip");
      this.node.innerHTML = html;
      this.node.hidden = false;
      const x = Math.min(event.clientX + 14, window.innerWidth - this.node.offsetWidth - 4);
      this.node.style.left = `${x}px`;
      this.node.style.top = `${event.clientY + 14}px`;
    },
    hide() {
      if (this.node) this.node.hidden = true;
    },
  };

  function escape(text) {
    return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  }

  function scale(domain, range) {
    const [d0, d1] = domain;
    const [r0, r1] = range;
    const span = d1 - d0 || 1;
    return (value) => r0 + ((value - d0) / span) * (r1 - r0);
  }

  function ticks(min, max, count = 5) {
    const step = (max - min) / count;
    return Array.from({ length: count + 1 }, (_, i) => min + i * step);
  }

  /**
   * A line chart. ``series``: [{name, xs, ys, color, className, title}]; a null y breaks the
   * line. Hovering a line highlights it and shows its name. Returns the <svg>.
   */
  function lineChart({ series, xDomain, yDomain = [0, 1], xLabel = "", yLabel = "",
    width = 560, height = 320, xTicks = null, marker = null, diagonal = false }) {
    const margin = { left: 44, right: 12, top: 10, bottom: 34 };
    const x = scale(xDomain, [margin.left, width - margin.right]);
    const y = scale(yDomain, [height - margin.bottom, margin.top]);
    const svg = svgEl("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      style: "max-width:100%;height:auto" });
    const axis = svgEl("g", { class: "axis" });
    for (const value of ticks(...yDomain)) {
      axis.append(svgEl("line", { x1: margin.left - 4, x2: margin.left, y1: y(value), y2: y(value) }));
      axis.append(svgEl("text", { x: margin.left - 6, y: y(value) + 4, "text-anchor": "end" },
        format(value, 1)));
    }
    for (const value of xTicks || ticks(...xDomain)) {
      axis.append(svgEl("line", { x1: x(value), x2: x(value), y1: height - margin.bottom,
        y2: height - margin.bottom + 4 }));
      axis.append(svgEl("text", { x: x(value), y: height - margin.bottom + 15,
        "text-anchor": "middle" }, format(value, Number.isInteger(value) ? 0 : 1)));
    }
    axis.append(svgEl("path", { d: `M${margin.left},${margin.top}V${height - margin.bottom}` +
      `H${width - margin.right}`, fill: "none" }));
    axis.append(svgEl("text", { x: (width + margin.left) / 2, y: height - 4,
      "text-anchor": "middle" }, xLabel));
    axis.append(svgEl("text", { x: 12, y: (height - margin.bottom) / 2,
      transform: `rotate(-90 12 ${(height - margin.bottom) / 2})`, "text-anchor": "middle" },
    yLabel));
    svg.append(axis);
    if (diagonal) {
      svg.append(svgEl("line", { x1: x(xDomain[0]), y1: y(yDomain[0]), x2: x(xDomain[1]),
        y2: y(yDomain[1]), stroke: "#9aa5b1", "stroke-dasharray": "4 3" }));
    }
    if (marker !== null) {
      svg.append(svgEl("line", { x1: x(marker), x2: x(marker), y1: margin.top,
        y2: height - margin.bottom, stroke: "#9aa5b1" }));
    }
    for (const item of series) {
      let path = "";
      let pen = "M";
      item.ys.forEach((value, i) => {
        if (value === null || value === undefined) {
          pen = "M";
          return;
        }
        path += `${pen}${x(item.xs[i]).toFixed(1)},${y(value).toFixed(1)}`;
        pen = "L";
      });
      const line = svgEl("path", { d: path, class: `series ${item.className || ""}`,
        stroke: item.color, "data-name": item.name });
      line.addEventListener("mousemove", (event) => {
        line.classList.add("hover");
        line.parentNode.append(line);
        tooltip.show(event, escape(item.title || item.name));
      });
      line.addEventListener("mouseleave", () => {
        line.classList.remove("hover");
        tooltip.hide();
      });
      svg.append(line);
    }
    return svg;
  }

  /**
   * A table sortable by any column. ``columns``: [{key, label, format?}]; ``rows``: objects;
   * ``rowClass(row)`` gives a class per row. Clicking a header sorts by it (again: reversed).
   */
  function sortableTable(columns, rows, { rowClass = () => "", sortKey = null,
    descending = true, id = null } = {}) {
    const state = { key: sortKey, descending };
    const table = el("table", { id });
    const head = el("tr");
    const body = el("tbody");
    function render() {
      const sorted = rows.slice();
      if (state.key !== null) {
        sorted.sort((a, b) => compare(a[state.key], b[state.key]) * (state.descending ? -1 : 1));
      }
      body.replaceChildren(...sorted.map((row) => el("tr", { class: rowClass(row) },
        columns.map((column) => el("td", { "data-key": column.key },
          column.format ? column.format(row[column.key], row) : format(row[column.key]))))));
      for (const th of head.children) {
        th.classList.toggle("sorted-down", th.dataset.key === state.key && state.descending);
        th.classList.toggle("sorted-up", th.dataset.key === state.key && !state.descending);
      }
    }
    for (const column of columns) {
      head.append(el("th", { class: "sortable", "data-key": column.key, title: column.title,
        onclick: () => {
          state.descending = state.key === column.key ? !state.descending : column.key !== "name";
          state.key = column.key;
          render();
        } }, column.label));
    }
    table.append(el("thead", {}, head), body);
    render();
    return table;
  }

  function compare(a, b) {
    const missingA = a === null || a === undefined;
    const missingB = b === null || b === undefined;
    if (missingA || missingB) return missingA - missingB;
    if (typeof a === "string") return a.localeCompare(b, undefined, { numeric: true });
    return a - b;
  }

  function legend(items) {
    return el("div", { class: "legend" }, items.map((item) => el("span", {},
      [el("i", { style: `background:${item.color}` }), item.name])));
  }

  return { el, svgEl, format, color, tooltip, escape, lineChart, sortableTable, legend };
})();
