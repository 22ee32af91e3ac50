// Read workbooks with SheetJS and ExcelJS; print {file: {reader: {sheet: [[cell, ...], ...]}}} as JSON.
//
//     TZ=UTC node tests/read_xlsx.js FILE.xlsx ...
//
// A cell is null (empty), a number, a string, a boolean, {"date": ISO-8601 in UTC} or {"error": text};
// a reader that cannot open a file gives {"failed": message} instead of its sheets.
// Used by tests/test_xlsx_readers.py: one node process for every workbook of the session.
"use strict";

const XLSX = require("xlsx");
const ExcelJS = require("exceljs");

function sheetjsCell(cell) {
  if (!cell || cell.t === "z") return null;
  switch (cell.t) {
    case "n": case "s": case "b": return cell.v;
    case "d": return { date: cell.v.toISOString() };
    case "e": return { error: cell.w };
    default: return { error: `unknown cell type ${cell.t}` };
  }
}

function readSheetJS(file) {
  const book = XLSX.readFile(file, { cellDates: true, cellFormula: true });
  const sheets = {};
  for (const name of book.SheetNames) {
    const sheet = book.Sheets[name];
    const rows = [];
    if (sheet["!ref"]) {
      const range = XLSX.utils.decode_range(sheet["!ref"]);
      for (let r = 0; r <= range.e.r; r++) {
        const row = [];
        for (let c = 0; c <= range.e.c; c++) {
          const cell = sheet[XLSX.utils.encode_cell({ r, c })];
          if (cell && cell.f) row.push({ error: `formula ${cell.f}` });
          else row.push(sheetjsCell(cell));
        }
        rows.push(row);
      }
    }
    sheets[name] = rows;
  }
  return sheets;
}

function excelCell(value) {
  if (value === null || value === undefined) return null;
  if (value instanceof Date) return { date: value.toISOString() };
  if (typeof value === "object") {
    if (value.richText) return value.richText.map((part) => part.text).join("");
    if (value.formula !== undefined || value.sharedFormula !== undefined) return { error: `formula ${value.formula}` };
    if (value.error !== undefined) return { error: String(value.error) };
    if (value.text !== undefined) return value.text; // hyperlink
    return { error: `unknown value ${JSON.stringify(value)}` };
  }
  return value;
}

async function readExcelJS(file) {
  const book = new ExcelJS.Workbook();
  await book.xlsx.readFile(file);
  const sheets = {};
  book.eachSheet((sheet) => {
    const rows = [];
    const width = sheet.columnCount;
    for (let r = 1; r <= sheet.rowCount; r++) {
      const row = [];
      const line = sheet.getRow(r);
      for (let c = 1; c <= width; c++) row.push(excelCell(line.getCell(c).value));
      rows.push(row);
    }
    sheets[sheet.name] = rows;
  });
  return sheets;
}

async function main() {
  const out = {};
  for (const file of process.argv.slice(2)) {
    out[file] = {};
    try { out[file].sheetjs = readSheetJS(file); } catch (e) { out[file].sheetjs = { failed: String(e.message || e) }; }
    try { out[file].exceljs = await readExcelJS(file); } catch (e) { out[file].exceljs = { failed: String(e.message || e) }; }
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => { console.error(e); process.exit(1); });
