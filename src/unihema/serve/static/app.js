// The UniHema page: choose an image, send it to POST /v1/predict, show the result.
// Every piece of text from the server is set with textContent, never parsed as HTML.
"use strict";

const VISION_TASKS = ["detection", "fov_morphology", "segmentation", "classification", "cell_morphology"];
const TASK_LABELS = {
  detection: "Cell detection",
  fov_morphology: "White-cell morphology in the field",
  segmentation: "Segmentation mask",
  classification: "Classify the image as one cell",
  cell_morphology: "Morphology of the image as one cell",
};

const state = { image: null, imageName: "", cells: [], colours: {} };

function $(id) {
  return document.getElementById(id);
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(message) {
  $("status").textContent = message;
}

async function getJson(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(body.message || response.statusText);
  return body;
}

function chooseImage(blob, name) {
  state.image = blob;
  state.imageName = name;
  $("input-name").textContent = `${name} (${Math.round(blob.size / 1024)} KiB)`;
  const preview = $("input-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  $("analyse").disabled = false;
  showError("");
}

async function loadModel() {
  try {
    const model = await getJson("/v1/model");
    state.colours = model.class_colours || {};
    const millions = (model.parameters / 1e6).toFixed(1);
    $("model-info").textContent =
      `Model: ${model.preset || "custom"} preset, ${millions} M parameters, on ${model.device}. ` +
      `Uploads up to ${(model.limits.max_upload_bytes / 1048576).toFixed(0)} MiB and ` +
      `${(model.limits.max_pixels / 1e6).toFixed(0)} megapixels (${model.limits.accepted_formats.join(", ")}).`;
    if (!model.trained_preprocessing) {
      $("model-warning").textContent =
        "This model records no training pre-processing: it is probably untrained, so its results are not meaningful.";
      $("model-warning").hidden = false;
    }
    const defaults = new Set(model.default_tasks);
    const fieldset = $("tasks");
    for (const task of VISION_TASKS.filter((t) => model.tasks.includes(t))) {
      const label = element("label", null, "check");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.name = "tasks";
      box.value = task;
      box.id = `task-${task}`;
      box.checked = defaults.has(task);
      label.append(box, ` ${TASK_LABELS[task] || task}`);
      fieldset.append(label);
    }
  } catch (error) {
    $("model-info").textContent = `The model description could not be loaded: ${error.message}`;
  }
}

async function loadExamples() {
  try {
    const examples = await getJson("/v1/examples");
    for (const example of examples) {
      const button = element("button", `${example.condition} (${example.width}x${example.height})`, "example-button");
      button.type = "button";
      button.dataset.name = example.name;
      button.addEventListener("click", async () => {
        const response = await fetch(example.url);
        chooseImage(await response.blob(), `${example.name}.png`);
        if (!$("disease").value) $("disease").value = example.disease;
      });
      $("examples").append(button);
    }
  } catch (error) {
    $("examples").textContent = `Examples unavailable: ${error.message}`;
  }
}

function percent(value) {
  return value === null || value === undefined ? "n/a" : `${Number(value).toFixed(1)} %`;
}

function addRow(list, name, value) {
  list.append(element("dt", name), element("dd", value));
}

function renderSummary(summary) {
  const target = $("summary");
  target.replaceChildren();
  if (!summary) {
    target.append(element("p", "No cell task was run: no summary.", "muted"));
    return;
  }
  const facts = element("dl", null, "facts");
  addRow(facts, "film", summary.film);
  addRow(facts, "cells", summary.n_cells);
  addRow(facts, "white cells", summary.white_cells);
  addRow(facts, "red cells", summary.red_cells);
  addRow(facts, "platelets", summary.platelets);
  addRow(facts, "platelets per 100 red cells", summary.platelets_per_100_red_cells ?? "n/a");
  addRow(facts, "parasites", summary.parasites);
  addRow(facts, "parasitemia", percent(summary.parasitemia_percent));
  addRow(facts, "low-confidence cells", percent(summary.low_confidence_percent));
  target.append(facts);

  const table = element("table", null, "differential");
  const head = element("tr");
  head.append(element("th", "white-cell category"), element("th", "count"), element("th", "% of white cells"));
  table.append(head);
  for (const row of summary.differential) {
    const line = element("tr");
    line.append(element("td", row.category), element("td", row.count), element("td", percent(row.percent)));
    table.append(line);
  }
  target.append(table);

  const flags = element("ul", null, "flags");
  for (const flag of summary.flags) flags.append(element("li", flag.message));
  if (!summary.flags.length) flags.append(element("li", "No review flag.", "muted"));
  target.append(element("h4", "Flags"), flags);
}

function renderCells() {
  const wanted = $("class-filter").value;
  const body = $("cells-table").tBodies[0];
  body.replaceChildren();
  const shown = state.cells.filter((cell) => !wanted || cell.class === wanted);
  shown.forEach((cell) => {
    const row = element("tr");
    const name = element("td", cell.class);
    name.style.borderLeft = `6px solid ${state.colours[cell.class] || "#888"}`;
    const attributes = Object.entries(cell.attributes || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
    row.append(element("td", state.cells.indexOf(cell)), name, element("td", cell.score.toFixed(3)),
      ...cell.box.map((v) => element("td", v.toFixed(1))), element("td", attributes));
    body.append(row);
  });
  $("cells-shown").textContent = `showing ${shown.length} of ${state.cells.length}`;
}

function renderResult(result) {
  const prediction = result.prediction;
  state.cells = prediction.cells;
  $("overlay").src = result.links.overlay;
  $("cell-count").textContent = String(prediction.cells.length);
  const counts = $("class-counts");
  counts.replaceChildren();
  for (const [name, count] of Object.entries(prediction.counts)) counts.append(element("li", `${name}: ${count}`));
  const filter = $("class-filter");
  filter.replaceChildren(element("option", "all classes"));
  filter.options[0].value = "";
  for (const name of Object.keys(prediction.counts)) {
    const option = element("option", `${name} (${prediction.counts[name]})`);
    option.value = name;
    filter.append(option);
  }
  const fraction = prediction.mask_foreground_fraction;
  $("mask-fraction").textContent = fraction === null ? "" : `Mask covers ${(100 * fraction).toFixed(1)} % of the image.`;
  $("single-cell").hidden = !prediction.cell_class && !prediction.cell_attributes;
  $("cell-class").textContent = prediction.cell_class ? `Most probable class: ${prediction.cell_class}` : "";
  const attributes = $("cell-attributes");
  attributes.replaceChildren();
  for (const [name, item] of Object.entries(prediction.cell_attributes || {})) {
    attributes.append(element("li", `${name}: ${item.value} (${(100 * item.probability).toFixed(0)} %)`));
  }
  $("answer-section").hidden = prediction.answer === null;
  $("question-echo").textContent = prediction.question || "";
  $("answer").textContent = prediction.answer || "";
  $("result-warnings").textContent = prediction.warnings.join("; ");
  $("result-warnings").hidden = !prediction.warnings.length;
  for (const kind of ["json", "csv", "geojson", "overlay"]) $(`download-${kind}`).href = result.links[kind];
  renderSummary(result.summary);
  renderCells();
  $("results").hidden = false;
}

async function analyse(event) {
  event.preventDefault();
  if (!state.image) {
    showError("Choose an image first.");
    return;
  }
  const form = new FormData();
  form.append("image", state.image, state.imageName);
  const tasks = [...document.querySelectorAll("#tasks input:checked")].map((box) => box.value);
  const question = $("question").value.trim();
  if (!tasks.length && !question) {
    showError("Choose at least one task or ask a question.");
    return;
  }
  // With no task ticked, a question asks for the answer alone (the server would add the default tasks).
  for (const task of tasks.length ? tasks : ["vqa"]) form.append("tasks", task);
  if (question) form.append("question", question);
  if ($("disease").value.trim()) form.append("disease", $("disease").value.trim());
  form.append("score_threshold", $("score-threshold").value || "0.3");
  showError("");
  setStatus("Analysing…");
  $("analyse").disabled = true;
  const started = performance.now();
  try {
    const response = await fetch("/v1/predict", { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      throw new Error(body.message + (retry ? ` (retry in ${retry} s)` : ""));
    }
    renderResult(body);
    setStatus(`Done in ${((performance.now() - started) / 1000).toFixed(1)} s.`);
  } catch (error) {
    setStatus("");
    showError(`The analysis failed: ${error.message}`);
  } finally {
    $("analyse").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("image-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) chooseImage(file, file.name);
  });
  $("class-filter").addEventListener("change", renderCells);
  $("predict-form").addEventListener("submit", analyse);
  loadModel();
  loadExamples();
});
