//! Daily cells summed in memory from the rebuild's order rows, within a
//! budget, then written to `rebuild_cells` with binary `COPY`.
//!
//! Summing 3 million contributions into 700 000 cells is cheaper here than
//! as a second aggregating query in PostgreSQL (that query alone took
//! longer than the whole order pass). Memory is capped: past `budget`
//! cells the partial sums go to a temporary table and PostgreSQL adds
//! them up at the end, so a store with more (day, merchant, currency)
//! cells than the budget costs time, never memory.

use std::collections::{BTreeMap, HashMap};

use sqlx::PgConnection;
use tally_domain::DailyMeasures;
use tally_projection::rows::{CellKey, DailyRow};
use time::Date;

use crate::RebuildError;

/// Merchants are numbered as they are first seen, so a cell key is three
/// small `Copy` values and adding to a cell allocates nothing.
type Key = (Date, u32, [u8; 3]);

/// Where an order's contributions go, whatever their day: its merchant's
/// number and its currency, looked up once per order.
#[derive(Clone, Copy, Debug)]
pub struct Column(u32, [u8; 3]);

/// Keys are this process's own small integers and the write store's
/// merchant ids, not an attacker's choice: a fast hasher (foldhash, also
/// hashbrown's default) instead of SipHash, which took a third of `add`.
type Fast = foldhash::fast::RandomState;

pub struct CellSums {
    merchants: HashMap<String, u32, Fast>,
    names: Vec<String>,
    sums: HashMap<Key, DailyMeasures, Fast>,
    budget: usize,
    spilled_rows: u64,
    /// The first cell whose sum left 64 bits: the pass must fail, never
    /// swap in a clamped figure ([`check`](Self::check)).
    overflowed: Option<Key>,
}

const SPILL_TABLE: &str = "rebuild_cells_spill";

impl CellSums {
    pub fn new(budget: usize) -> Self {
        CellSums {
            merchants: HashMap::default(),
            names: Vec::new(),
            sums: HashMap::default(),
            budget: budget.max(1),
            spilled_rows: 0,
            overflowed: None,
        }
    }

    pub fn column(&mut self, merchant: &str, currency: &str) -> Column {
        let id = match self.merchants.get(merchant) {
            Some(&id) => id,
            None => {
                let id = self.names.len() as u32;
                self.names.push(merchant.to_owned());
                self.merchants.insert(merchant.to_owned(), id);
                id
            }
        };
        Column(id, tally_projection::rows::currency_bytes(currency))
    }

    pub fn add_at(&mut self, day: Date, at: Column, m: &DailyMeasures) {
        let key = (day, at.0, at.1);
        let cell = self.sums.entry(key).or_default();
        match cell.checked_add(m) {
            Some(sum) => *cell = sum,
            None => {
                self.overflowed.get_or_insert(key);
            }
        }
    }

    /// Fails if any cell's sum left 64 bits (PostgreSQL's `int8` and
    /// ClickHouse's `Int64` could not hold it either).
    pub fn check(&self) -> Result<(), RebuildError> {
        match self.overflowed.as_ref() {
            None => Ok(()),
            Some(&(day, m, currency)) => Err(RebuildError::Refused(format!(
                "the daily cell ({day}, {}, {}) sums past 64-bit minor units; \
                 nothing was swapped. Find the order with `SELECT * FROM order_items \
                 ORDER BY unit_price_minor DESC LIMIT 10`",
                self.names[m as usize],
                String::from_utf8_lossy(&currency),
            ))),
        }
    }

    pub fn add(&mut self, day: Date, merchant: &str, currency: &str, m: &DailyMeasures) {
        let at = self.column(merchant, currency);
        self.add_at(day, at, m);
    }

    /// Over budget: the caller should [`spill`](Self::spill).
    pub fn full(&self) -> bool {
        self.sums.len() >= self.budget
    }

    /// Moves the partial sums to a temporary table on `conn` (dropped at
    /// the end of its transaction).
    pub async fn spill(&mut self, conn: &mut PgConnection) -> Result<(), RebuildError> {
        if self.spilled_rows == 0 {
            sqlx::query(&format!(
                "CREATE TEMP TABLE {SPILL_TABLE} (LIKE rebuild_cells) ON COMMIT DROP"
            ))
            .execute(&mut *conn)
            .await?;
        }
        self.spilled_rows += self.copy_into(conn, SPILL_TABLE, 0).await?;
        tracing::debug!(
            spilled_rows = self.spilled_rows,
            "daily cells over the memory budget; partial sums spilled"
        );
        Ok(())
    }

    /// Writes every cell, with `version`, into `table` (empty, in `conn`'s
    /// transaction). Returns the number of cells written.
    pub async fn write(
        mut self,
        conn: &mut PgConnection,
        table: &str,
        version: i64,
    ) -> Result<u64, RebuildError> {
        if self.spilled_rows == 0 {
            return self.copy_into(conn, table, version).await;
        }
        self.spill(conn).await?;
        let written = sqlx::query(&format!(
            "INSERT INTO {table} ({cols})
             SELECT day, merchant_id, currency, {sums}, $1
             FROM {SPILL_TABLE} GROUP BY day, merchant_id, currency",
            cols = tally_projection::totals::totals_columns(),
            sums = tally_projection::totals::each_measure(|m| format!("sum({m})::int8"), ", ")
        ))
        .bind(version)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        Ok(written)
    }

    /// `COPY`s the cells in key order (kinder to the primary key index)
    /// and empties the map.
    async fn copy_into(
        &mut self,
        conn: &mut PgConnection,
        table: &str,
        version: i64,
    ) -> Result<u64, RebuildError> {
        let cells = self.drain_sorted();
        copy_cells(conn, table, &self.names, &cells, version).await
    }

    fn drain_sorted(&mut self) -> Vec<(Key, DailyMeasures)> {
        let mut cells: Vec<(Key, DailyMeasures)> = self.sums.drain().collect();
        self.sums.shrink_to(0);
        let names = &self.names;
        cells.sort_unstable_by(|(a, _), (b, _)| {
            (a.0, &names[a.1 as usize], a.2).cmp(&(b.0, &names[b.1 as usize], b.2))
        });
        cells
    }

    /// When nothing was spilled: every cell minus what `backlog` (events
    /// not yet projected) adds, all-zero cells left out, in key order.
    /// Otherwise the sums back, for [`write`](Self::write).
    pub fn into_sorted(
        mut self,
        backlog: &BTreeMap<CellKey, DailyMeasures>,
        version: i64,
    ) -> Result<SortedCells, Box<CellSums>> {
        if self.spilled_rows > 0 {
            return Err(Box::new(self));
        }
        for (k, m) in backlog {
            self.add(k.day, k.merchant.as_str(), k.currency.code(), &m.negated());
        }
        self.sums.retain(|_, m| !m.is_zero());
        let cells = self.drain_sorted();
        Ok(SortedCells {
            names: self.names,
            cells,
            version,
        })
    }
}

/// A pass's cells that fitted the budget, sorted by (day, merchant,
/// currency): written to PostgreSQL and compared with ClickHouse from
/// memory, side by side.
pub struct SortedCells {
    names: Vec<String>,
    cells: Vec<(Key, DailyMeasures)>,
    version: i64,
}

impl SortedCells {
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    pub fn day_counts(&self) -> BTreeMap<Date, u64> {
        let mut out = BTreeMap::new();
        for ((day, _, _), _) in &self.cells {
            *out.entry(*day).or_default() += 1;
        }
        out
    }

    /// The cells of days `from ..= to`, as the rows the shadow takes.
    pub fn rows_between(&self, from: Date, to: Date) -> Vec<DailyRow> {
        let a = self.cells.partition_point(|((d, _, _), _)| *d < from);
        let b = self.cells.partition_point(|((d, _, _), _)| *d <= to);
        self.cells[a..b.max(a)]
            .iter()
            .map(|((day, merchant, currency), m)| {
                DailyRow::new(
                    *day,
                    self.names[*merchant as usize].clone(),
                    *currency,
                    m,
                    self.version as u64,
                )
            })
            .collect()
    }

    /// Writes every cell into `table` (empty, in `conn`'s transaction).
    pub async fn write(&self, conn: &mut PgConnection, table: &str) -> Result<u64, RebuildError> {
        copy_cells(conn, table, &self.names, &self.cells, self.version).await
    }
}

async fn copy_cells(
    conn: &mut PgConnection,
    table: &str,
    names: &[String],
    cells: &[(Key, DailyMeasures)],
    version: i64,
) -> Result<u64, RebuildError> {
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} ({}) FROM STDIN (FORMAT binary)",
            tally_projection::totals::totals_columns()
        ))
        .await?;
    let mut buf = Vec::with_capacity(1 << 20);
    buf.extend_from_slice(COPY_BINARY_HEADER);
    for ((day, merchant, cur), m) in cells {
        encode_cell(&mut buf, *day, &names[*merchant as usize], *cur, m, version);
        if buf.len() >= 1 << 20 {
            copy.send(buf.as_slice()).await?;
            buf.clear();
        }
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    copy.send(buf.as_slice()).await?;
    Ok(copy.finish().await?)
}

/// `COPY … (FORMAT binary)`: signature, flags, header extension length.
const COPY_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// PostgreSQL's `date` is days since 2000-01-01 (Julian day 2 451 545).
const PG_EPOCH_JULIAN_DAY: i32 = 2_451_545;

/// One cell as a binary `COPY` tuple in `totals_columns()` order. Binary, not
/// text: PostgreSQL parses no numbers or dates and nothing needs escaping
/// (text `COPY` of 700 000 cells cost it 10-20 % more).
/// Fields of a binary `COPY` tuple: the key's three, the measures, the
/// version. Checked when compiled, so the cast below cannot truncate.
const TUPLE_FIELDS: i16 = {
    assert!(DailyMeasures::COUNT + 4 <= 100);
    (DailyMeasures::COUNT + 4) as i16
};

fn encode_cell(
    out: &mut Vec<u8>,
    day: Date,
    merchant: &str,
    currency: [u8; 3],
    m: &DailyMeasures,
    version: i64,
) {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(&TUPLE_FIELDS.to_be_bytes());
    field(
        out,
        &(day.to_julian_day() - PG_EPOCH_JULIAN_DAY).to_be_bytes(),
    );
    field(out, merchant.as_bytes());
    field(out, &currency);
    for v in m.values().into_iter().chain([version]) {
        field(out, &v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn a_cell_is_encoded_as_a_binary_copy_tuple() {
        let m = DailyMeasures {
            orders_placed: 2,
            gross_minor: -300,
            captured_minor: 1,
            refunded_minor: 0,
            orders_cancelled: 1,
            items_sold: 7,
        };
        let mut out = Vec::new();
        encode_cell(&mut out, date!(2000 - 01 - 02), "m\t1", *b"EUR", &m, 9);
        let mut want: Vec<u8> = vec![0, 10];
        want.extend([0, 0, 0, 4, 0, 0, 0, 1]); // one day after PostgreSQL's epoch
        want.extend([0, 0, 0, 3, b'm', b'\t', b'1']); // no escaping in binary
        want.extend([0, 0, 0, 3, b'E', b'U', b'R']);
        for v in [2i64, -300, 1, 0, 1, 7, 9] {
            want.extend([0, 0, 0, 8]);
            want.extend(v.to_be_bytes());
        }
        assert_eq!(out, want);
        assert_eq!(COPY_BINARY_HEADER.len(), 19);
        out.clear();
        encode_cell(&mut out, date!(1999 - 12 - 31), "m", *b"EUR", &m, 9);
        assert_eq!(&out[2..10], &[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn contributions_to_one_cell_add_up_and_the_budget_is_reported() {
        let mut c = CellSums::new(2);
        let m = DailyMeasures {
            gross_minor: 5,
            orders_placed: 1,
            ..DailyMeasures::default()
        };
        c.add(date!(2026 - 01 - 01), "m1", "EUR", &m);
        c.add(date!(2026 - 01 - 01), "m1", "EUR", &m);
        assert!(!c.full());
        c.add(date!(2026 - 01 - 01), "m1", "USD", &m);
        assert!(c.full());
        let eur = &c.sums[&(date!(2026 - 01 - 01), 0, *b"EUR")];
        assert_eq!((eur.orders_placed, eur.gross_minor), (2, 10));
        assert_eq!(c.names, vec!["m1".to_owned()]);
    }
}
