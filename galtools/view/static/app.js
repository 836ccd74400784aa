// gal-view's page: search by id, a pannable map of the representation, filters. Talks only to this server's /api.
"use strict";

const state = { info: null, points: null, filter: "", colour: "", view: null, highlight: new Map(),
                images: new Map(), lastResults: null };
const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const TILE_PIXELS = 44;         // a galaxy's picture on the map when zoomed in
const TILES_WHEN_FEWER = 60;    // draw pictures when at most this many points are in view

const $ = (id) => document.getElementById(id);

function showError(text) {
  const box = $("error");
  if (text) { box.textContent = text; box.hidden = false; } else { box.textContent = ""; box.hidden = true; }
}

async function api(path, params) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params || {})) {
    if (Array.isArray(value)) { value.forEach((v) => url.searchParams.append(key, v)); }
    else if (value !== "" && value !== null && value !== undefined) { url.searchParams.set(key, value); }
  }
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) { throw new Error(body.error || `HTTP ${response.status}`); }
  return body;
}

function tileUrl(id) { return "/api/tile?id=" + encodeURIComponent(id); }

function formatValue(value) {
  if (value === null || value === undefined) { return "–"; }
  if (typeof value === "number" && !Number.isInteger(value)) { return value.toPrecision(4); }
  return String(value);
}

// ------------------------------------------------------------------------------------------------ search results

function card(item, isQuery) {
  const tile = document.createElement("div");
  tile.className = isQuery ? "tile query" : "tile neighbour";
  tile.dataset.id = item.id;
  tile.title = "click: search for " + item.id;
  if (item.has_image) {
    const img = document.createElement("img");
    img.src = tileUrl(item.id);
    img.alt = "object " + item.id;
    tile.appendChild(img);
  }
  const lines = [["id", String(item.id)]];
  if (item.similarity !== undefined) { lines.push(["similarity", "sim " + item.similarity.toFixed(4)]); }
  if (item.label !== null && item.label !== undefined) { lines.push(["label", formatValue(item.label)]); }
  for (const [name, value] of Object.entries(item.columns || {})) { lines.push(["muted", name + " " + formatValue(value)]); }
  for (const [kind, text] of lines) {
    const div = document.createElement("div");
    div.className = kind;
    div.textContent = text;
    tile.appendChild(div);
  }
  tile.addEventListener("click", () => { $("ids").value = String(item.id); search([String(item.id)]); });
  if (state.info && state.info.labels) { addMarkButtons(tile, item.id); }
  return tile;
}

function showResults(results) {
  const panel = $("results");
  panel.replaceChildren();
  state.highlight = new Map();
  for (const result of results) {
    const block = document.createElement("div");
    block.className = "result";
    const title = document.createElement("h2");
    const which = result.least ? "least similar" : "most similar";
    title.textContent = `${result.neighbors.length} ${which} to ${result.query.id}` +
      (result.filter ? ` (filter: ${result.filter})` : "");
    block.appendChild(title);
    const grid = document.createElement("div");
    grid.className = "grid";
    grid.appendChild(card(result.query, true));
    for (const neighbour of result.neighbors) {
      grid.appendChild(card(neighbour, false));
      state.highlight.set(String(neighbour.id), "#ffffff");
    }
    state.highlight.set(String(result.query.id), "#ff8c1a");
    block.appendChild(grid);
    panel.appendChild(block);
  }
  drawMap();
}

async function search(ids) {
  showError("");
  if (!ids.length) { showError("type an object_id to search for"); return; }
  try {
    const body = await api("/api/search", { id: ids, k: $("k").value, least: $("least").checked ? 1 : 0,
                                            filter: state.filter });
    state.lastResults = body.results;
    showResults(body.results);
  } catch (error) { showError(error.message); }
}

// ----------------------------------------------------------------------------------------------------- the map

function fitView() {
  const canvas = $("map");
  const [x0, x1, y0, y1] = state.points.bounds;
  const spanX = Math.max(x1 - x0, 1e-9), spanY = Math.max(y1 - y0, 1e-9);
  const scale = 0.92 * Math.min(canvas.width / spanX, canvas.height / spanY);
  state.view = { scale, cx: (x0 + x1) / 2, cy: (y0 + y1) / 2 };
}

function toScreen(x, y) {
  const canvas = $("map"), v = state.view;
  return [canvas.width / 2 + (x - v.cx) * v.scale, canvas.height / 2 - (y - v.cy) * v.scale];
}

function toMap(sx, sy) {
  const canvas = $("map"), v = state.view;
  return [v.cx + (sx - canvas.width / 2) / v.scale, v.cy - (sy - canvas.height / 2) / v.scale];
}

function rampColour(t) {
  const s = Math.min(Math.max(t, 0), 1) * (RAMP.length - 1), i = Math.min(Math.floor(s), RAMP.length - 2), f = s - i;
  const c = RAMP[i].map((a, j) => Math.round(a + f * (RAMP[i + 1][j] - a)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function pointColour(i) {
  const colour = state.points.colour;
  if (!colour) { return "#8fb3ff"; }
  const value = colour.values[i];
  if (value === null) { return "#555"; }
  if (colour.kind === "category") { return colour.colours[value]; }   // the server's, as gal-map's
  return rampColour((value - colour.low) / Math.max(colour.high - colour.low, 1e-12));
}

function mapImage(id) {
  let img = state.images.get(id);
  if (!img) {
    img = new Image();
    img.onload = () => requestDraw();
    img.src = tileUrl(id);
    state.images.set(id, img);
    if (state.images.size > 2000) { state.images.delete(state.images.keys().next().value); }
  }
  return img;
}

let drawPending = false;
function requestDraw() {
  if (!drawPending) { drawPending = true; requestAnimationFrame(() => { drawPending = false; drawMap(); }); }
}

function drawMap() {
  const canvas = $("map"), context = canvas.getContext("2d"), points = state.points;
  context.fillStyle = "#111";
  context.fillRect(0, 0, canvas.width, canvas.height);
  if (!points || !state.view) { return; }
  const visible = [];
  for (let i = 0; i < points.x.length; i++) {
    const [sx, sy] = toScreen(points.x[i], points.y[i]);
    if (sx < -TILE_PIXELS || sy < -TILE_PIXELS || sx > canvas.width + TILE_PIXELS || sy > canvas.height + TILE_PIXELS) { continue; }
    visible.push(i);
    context.fillStyle = pointColour(i);
    context.fillRect(sx - 1.5, sy - 1.5, 3, 3);
  }
  if (visible.length <= TILES_WHEN_FEWER) {
    for (const i of visible) {
      const [sx, sy] = toScreen(points.x[i], points.y[i]);
      const img = mapImage(String(points.ids[i]));
      if (img.complete && img.naturalWidth) {
        context.imageSmoothingEnabled = false;
        context.drawImage(img, sx - TILE_PIXELS / 2, sy - TILE_PIXELS / 2, TILE_PIXELS, TILE_PIXELS);
        context.strokeStyle = pointColour(i);
        context.strokeRect(sx - TILE_PIXELS / 2, sy - TILE_PIXELS / 2, TILE_PIXELS, TILE_PIXELS);
      }
    }
  }
  for (let i = 0; i < points.x.length; i++) {
    const ring = state.highlight.get(String(points.ids[i]));
    if (!ring) { continue; }
    const [sx, sy] = toScreen(points.x[i], points.y[i]);
    context.strokeStyle = ring;
    context.lineWidth = 2;
    context.beginPath();
    context.arc(sx, sy, 6, 0, 2 * Math.PI);
    context.stroke();
    context.lineWidth = 1;
  }
}

function showLegend() {
  const legend = $("legend"), colour = state.points && state.points.colour;
  legend.replaceChildren();
  if (!colour) { return; }
  if (colour.kind === "category") {
    colour.categories.forEach((name, i) => {
      const item = document.createElement("span"), swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colour.colours[i];
      item.append(swatch, document.createTextNode(name));
      legend.appendChild(item);
    });
  } else {
    const ramp = document.createElement("span");
    ramp.className = "ramp";
    legend.append(document.createTextNode(`${colour.column} ${formatValue(colour.low)} `), ramp,
                  document.createTextNode(` ${formatValue(colour.high)}`));
  }
}

function nearestPoint(sx, sy) {
  const points = state.points;
  let best = -1, bestDistance = 10 * 10;
  for (let i = 0; i < points.x.length; i++) {
    const [px, py] = toScreen(points.x[i], points.y[i]);
    const distance = (px - sx) ** 2 + (py - sy) ** 2;
    if (distance < bestDistance) { best = i; bestDistance = distance; }
  }
  return best;
}

function setUpMapControls() {
  const canvas = $("map");
  let drag = null;
  canvas.addEventListener("mousedown", (event) => { drag = { x: event.offsetX, y: event.offsetY, moved: false }; });
  canvas.addEventListener("mousemove", (event) => {
    if (!drag || !state.view) { return; }
    const dx = event.offsetX - drag.x, dy = event.offsetY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 2) { drag.moved = true; }
    state.view.cx -= dx / state.view.scale;
    state.view.cy += dy / state.view.scale;
    drag.x = event.offsetX; drag.y = event.offsetY;
    requestDraw();
  });
  canvas.addEventListener("mouseup", (event) => {
    const wasClick = drag && !drag.moved;
    drag = null;
    if (!wasClick || !state.points) { return; }
    const i = nearestPoint(event.offsetX, event.offsetY);
    if (i >= 0) { $("ids").value = String(state.points.ids[i]); search([String(state.points.ids[i])]); }
  });
  canvas.addEventListener("mouseleave", () => { drag = null; });
  canvas.addEventListener("wheel", (event) => {
    if (!state.view) { return; }
    event.preventDefault();
    const [mx, my] = toMap(event.offsetX, event.offsetY);
    const factor = Math.exp(-event.deltaY * 0.0015);
    state.view.scale *= factor;
    state.view.cx = mx - (mx - state.view.cx) / factor;
    state.view.cy = my - (my - state.view.cy) / factor;
    requestDraw();
  }, { passive: false });
  $("reset-view").addEventListener("click", () => { if (state.points) { fitView(); drawMap(); } });
}

// ------------------------------------------------------------------------------------------- filter and colour

function downloadHref() {
  return "/api/selection.csv" + (state.filter ? "?filter=" + encodeURIComponent(state.filter) : "");
}

async function loadPoints(keepView) {
  const body = await api("/api/points", { filter: state.filter, colour: state.colour });
  state.points = body;
  if (!keepView || !state.view) { fitView(); }
  $("selection-count").textContent = `${body.count} of ${body.total} shown`;
  $("download").href = downloadHref();
  showLegend();
  drawMap();
}

async function applyFilter(text) {
  showError("");
  const previous = state.filter;
  state.filter = text.trim();
  try {
    await loadPoints(true);
    if (state.lastResults && state.lastResults.length) {
      await search(state.lastResults.map((r) => String(r.query.id)));
    }
  } catch (error) {
    state.filter = previous;
    showError(error.message);
  }
}

async function start() {
  setUpMapControls();
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    search($("ids").value.split(/[\s,;]+/).filter((s) => s));
  });
  $("ids").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("search-button").click(); }
  });
  $("filter-form").addEventListener("submit", (event) => { event.preventDefault(); applyFilter($("filter").value); });
  $("clear-filter").addEventListener("click", () => { $("filter").value = ""; applyFilter(""); });
  $("colour").addEventListener("change", async () => {
    state.colour = $("colour").value;
    try { await loadPoints(true); } catch (error) { showError(error.message); }
  });
  try {
    const info = await api("/api/info");
    state.info = info;
    $("k").value = info.default_k;
    $("k").max = info.max_k;
    $("summary").textContent = `${info.count} objects, ${info.dim}-d embeddings, ${info.search} search, map: ${info.map}`;
    if (info.example_id !== null) { $("ids").placeholder = `an id (e.g. ${info.example_id}), or paste a list`; }
    for (const name of info.colourable) {
      const option = document.createElement("option");
      option.value = name; option.textContent = name;
      $("colour").appendChild(option);
    }
    if (info.label) { $("colour").value = info.label; state.colour = info.label; }
    await loadPoints(false);
    if (info.labels) { $("discovery").hidden = false; await loadProposals(); }
    document.body.dataset.ready = "1";
  } catch (error) { showError(error.message); }
}

// ------------------------------------------------------------------------------- marks and the next to label

state.marks = {};

function showMark(tile, mark) {
  tile.classList.toggle("marked-yes", mark === "yes");
  tile.classList.toggle("marked-no", mark === "no");
}

function addMarkButtons(tile, id) {
  const row = document.createElement("div");
  row.className = "marks";
  for (const [mark, text, title] of [["yes", "interesting", "more like this"], ["no", "not", "not wanted"]]) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "mark-" + mark;
    button.textContent = text;
    button.title = title;
    button.addEventListener("click", (event) => { event.stopPropagation(); sendMark(id, mark); });
    row.appendChild(button);
  }
  tile.appendChild(row);
  showMark(tile, state.marks[String(id)]);
}

async function sendMark(id, mark) {
  showError("");
  try {
    const response = await fetch("/api/label", { method: "POST", headers: { "Content-Type": "application/json" },
                                                 body: JSON.stringify({ id: String(id), label: mark }) });
    const body = await response.json();
    if (!response.ok) { throw new Error(body.error || `HTTP ${response.status}`); }
    state.marks[String(id)] = mark;
    document.querySelectorAll(".tile").forEach((tile) => {
      if (tile.dataset.id === String(id)) { showMark(tile, mark); }
    });
    await loadProposals();
  } catch (error) { showError(error.message); }
}

async function loadProposals() {
  const body = await api("/api/rank", { n: 20 });
  state.marks = body.marks;
  $("label-counts").textContent = `(${body.positives} interesting, ${body.negatives} not, in ${body.labels}; ` +
    (body.method === "prior" ? "no interesting one yet: the most unusual first)" : "ranked like the interesting ones)");
  const grid = $("proposals");
  grid.replaceChildren();
  for (const item of body.proposed) {
    const tile = card(item, false);
    if (item.nearest_positive_id !== undefined) {
      const why = document.createElement("div");
      why.className = "muted";
      why.textContent = `like ${item.nearest_positive_id} (${item.nearest_positive_similarity.toFixed(3)})`;
      tile.insertBefore(why, tile.querySelector(".marks"));
    }
    grid.appendChild(tile);
  }
  document.body.dataset.proposals = String(Date.now());
}

// Where a galaxy is drawn on the map canvas (CSS pixels from its top-left corner), or null when not shown:
// for scripts that drive the page (the browser test clicks a point with it).
window.galView = {
  screenOf(id) {
    if (!state.points) { return null; }
    const i = state.points.ids.findIndex((v) => String(v) === String(id));
    return i < 0 ? null : toScreen(state.points.x[i], state.points.y[i]);
  },
};

document.addEventListener("DOMContentLoaded", start);
