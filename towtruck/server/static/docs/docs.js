// towtruck API docs: renders the node's /openapi.json into a list of routes, errors and
// schemas. No framework, nothing from elsewhere; text goes in as text, never as HTML
// (method names and docstrings come from the actors' code).
"use strict";

const VERBS = ["get", "post", "put", "patch", "delete"];

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

// Markdown's `code` spans as <code>; everything else as plain text.
function prose(text, className, tag) {
  const node = el(tag || "p", { class: className || "prose" });
  String(text || "").split("`").forEach((part, index) => {
    node.append(index % 2 ? el("code", { text: part }) : document.createTextNode(part));
  });
  return node;
}

function refName(ref) {
  return ref.split("/").pop();
}

function schemaBlock(schema) {
  if (!schema || Object.keys(schema).length === 0) return el("p", { class: "dim", text: "any JSON" });
  if (schema.$ref) {
    const name = refName(schema.$ref);
    return el("p", {}, el("a", { href: "#schema-" + name, text: name }));
  }
  return el("pre", { text: JSON.stringify(schema, null, 2) });
}

function operationView(path, verb, operation, pathParameters) {
  const summary = el("summary", {},
    el("span", { class: "verb " + verb, text: verb.toUpperCase() }),
    el("span", { class: "mono", text: path }),
    operation.security ? el("span", { class: "key", text: "cluster key" }) : null,
    prose(operation.summary, "text", "span"));
  const body = el("div", { class: "body" }, prose(operation.description));
  const parameters = [...(pathParameters || []), ...(operation.parameters || [])];
  if (parameters.length) {
    const table = el("table", {}, el("tr", {}, el("th", { text: "parameter" }),
      el("th", { text: "in" }), el("th", { text: "type" }), el("th", { text: "" })));
    for (const p of parameters) {
      table.append(el("tr", {}, el("td", { class: "mono", text: p.name }),
        el("td", { text: p.in }), el("td", { text: (p.schema && p.schema.type) || "" }),
        el("td", {}, prose(p.description || "", "dim"))));
    }
    body.append(el("h3", { text: "Parameters" }), table);
  }
  const request = operation.requestBody;
  if (request) {
    const media = Object.values(request.content || {})[0] || {};
    body.append(el("h3", { text: "Request body" }), schemaBlock(media.schema));
  }
  const answers = el("p", {});
  for (const [status, response] of Object.entries(operation.responses || {})) {
    if (status === "200") {
      const [type, media] = Object.entries(response.content || {})[0] || ["", {}];
      body.append(el("h3", { text: "Answer (200, " + type + ")" }));
      if (type === "application/json") body.append(schemaBlock(media.schema));
    } else if (response.$ref) {
      if (answers.childNodes.length) answers.append(" ");
      answers.append(el("a", { href: "#" + refName(response.$ref), text: status }));
    }
  }
  if (answers.childNodes.length) body.append(el("h3", { text: "Errors" }), answers);
  return el("details", { "data-path": path }, summary, body);
}

function render(document_) {
  const info = document_.info || {};
  document.getElementById("title").textContent = info.title || "towtruck";
  document.getElementById("version").textContent = info.version || "";
  document.getElementById("description").replaceWith(prose(info.description));
  const byTag = new Map((document_.tags || []).map((tag) => [tag.name, []]));
  for (const [path, item] of Object.entries(document_.paths || {})) {
    for (const verb of VERBS) {
      const operation = item[verb];
      if (!operation) continue;
      const tag = (operation.tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operationView(path, verb, operation, item.parameters));
    }
  }
  const tags = document.getElementById("tags");
  const described = new Map((document_.tags || []).map((tag) => [tag.name, tag.description]));
  for (const [tag, views] of byTag) {
    if (!views.length) continue;
    tags.append(el("section", { class: "card" }, el("h2", { text: tag }),
      described.get(tag) ? prose(described.get(tag), "dim") : null, ...views));
  }
  const components = document_.components || {};
  const errors = document.getElementById("errors");
  for (const [name, response] of Object.entries(components.responses || {})) {
    errors.append(el("div", { id: name }, el("h3", { text: name }), prose(response.description)));
  }
  const schemas = document.getElementById("schemas");
  for (const [name, schema] of Object.entries(components.schemas || {})) {
    schemas.append(el("div", { id: "schema-" + name }, el("h3", { text: name }),
      el("pre", { text: JSON.stringify(schema, null, 2) })));
  }
  document.body.dataset.state = "ready";
}

function filter(text) {
  const wanted = text.trim().toLowerCase();
  for (const details of document.querySelectorAll("details[data-path]")) {
    details.hidden = wanted !== "" && !details.dataset.path.toLowerCase().includes(wanted);
  }
}

async function load() {
  document.getElementById("filter").addEventListener("input", (event) => filter(event.target.value));
  try {
    const response = await fetch("openapi.json", { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (error) {
    const problem = document.getElementById("problem");
    problem.textContent = "Could not load openapi.json: " + error.message;
    problem.hidden = false;
    document.body.dataset.state = "failed";
  }
}

load();
