//! Given/when/then tests of the Order aggregate: every command against
//! every reachable state, with no database.

use time::macros::datetime;
use uuid::Uuid;

use crate::*;

const TOTAL: i64 = 2 * 1250 + 499; // two lines, see `place_cmd`

fn uuid(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn address() -> Address {
    Address {
        name: Text::parse("Ada Lovelace").unwrap(),
        line1: Text::parse("12 Analytical St").unwrap(),
        line2: None,
        city: Text::parse("London").unwrap(),
        region: None,
        postal_code: Text::parse("N1 9GU").unwrap(),
        country: CountryCode::parse("GB").unwrap(),
    }
}

fn line(sku: &str, qty: i64, price: i64) -> LineItem {
    LineItem {
        sku: Sku::parse(sku).unwrap(),
        quantity: Quantity::parse(qty).unwrap(),
        unit_price: Amount::parse(price).unwrap(),
    }
}

fn place_cmd(items: Vec<LineItem>) -> PlaceOrder {
    PlaceOrder {
        order_id: OrderId::from_uuid(uuid(1)),
        merchant_id: MerchantId::parse("m-1").unwrap(),
        customer_id: CustomerId::parse("c-1").unwrap(),
        currency: Currency::parse("EUR").unwrap(),
        items: LineItems::parse(items).unwrap(),
        shipping_address: address(),
    }
}

fn amount(n: i64) -> Amount {
    Amount::parse(n).unwrap()
}

fn capture(n: i64) -> OrderCommand {
    OrderCommand::CapturePayment {
        payment_id: PaymentId::from_uuid(uuid(10)),
        amount: amount(n),
    }
}

fn ship() -> OrderCommand {
    OrderCommand::Ship {
        shipment_id: ShipmentId::from_uuid(uuid(11)),
        carrier: Text::parse("DHL").unwrap(),
        tracking_number: Text::parse("JD0123").unwrap(),
    }
}

fn cancel() -> OrderCommand {
    OrderCommand::Cancel {
        reason: Text::parse("customer changed their mind").unwrap(),
        refund_id: RefundId::from_uuid(uuid(12)),
    }
}

fn refund(n: i64) -> OrderCommand {
    OrderCommand::Refund {
        refund_id: RefundId::from_uuid(uuid(13)),
        amount: amount(n),
        reason: None,
    }
}

/// Given: an order placed, then the commands applied in turn (each must
/// succeed).
fn given(history: &[OrderCommand]) -> Order {
    let cmd = place_cmd(vec![line("sku-a", 2, 1250), line("sku-b", 1, 499)]);
    let placed = order::place(&cmd).unwrap();
    let mut o = Order::from_placed(cmd.order_id, &placed, datetime!(2026-11-23 10:00 UTC)).unwrap();
    for c in history {
        let e = o.handle(c).unwrap_or_else(|e| panic!("given {c:?}: {e}"));
        o.apply(&e);
    }
    o
}

#[test]
fn placing_computes_total_and_starts_at_version_one() {
    let o = given(&[]);
    assert_eq!(o.total.minor(), TOTAL);
    assert_eq!(o.item_count, 3);
    assert_eq!(o.status, OrderStatus::Placed);
    assert_eq!(o.version, Version::FIRST);
    assert!(o.captured.is_zero() && o.refunded.is_zero());
}

#[test]
fn placing_rejects_overflowing_and_zero_totals() {
    let too_large = Err(DomainError::TotalTooLarge {
        max: Amount::MAX.minor(),
    });
    // One line's price × quantity past the bound, and lines each within it
    // whose sum is past it.
    let huge = place_cmd(vec![line("a", 1_000_000, Amount::MAX.minor())]);
    assert_eq!(order::place(&huge), too_large);
    let sum = place_cmd(vec![line("a", 1, Amount::MAX.minor()), line("b", 1, 1)]);
    assert_eq!(order::place(&sum), too_large);
    let at_bound = place_cmd(vec![line("a", 1, Amount::MAX.minor())]);
    assert_eq!(order::place(&at_bound).map(|_| ()), Ok(()));
    let free = place_cmd(vec![line("a", 3, 0)]);
    assert_eq!(order::place(&free), Err(DomainError::ZeroTotal));
}

#[test]
fn line_items_are_bounded() {
    assert!(LineItems::parse(vec![]).is_err());
    assert!(LineItems::parse(vec![line("a", 1, 1); 100]).is_ok());
    assert!(LineItems::parse(vec![line("a", 1, 1); 101]).is_err());
}

/// The reachable states, by name, with the history that reaches them.
fn states() -> Vec<(&'static str, Vec<OrderCommand>)> {
    vec![
        ("placed", vec![]),
        ("paid", vec![capture(TOTAL)]),
        ("paid, partly refunded", vec![capture(TOTAL), refund(1000)]),
        ("paid, fully refunded", vec![capture(TOTAL), refund(TOTAL)]),
        ("shipped", vec![capture(TOTAL), ship()]),
        (
            "shipped, partly refunded",
            vec![capture(TOTAL), ship(), refund(1)],
        ),
        ("cancelled before payment", vec![cancel()]),
        ("cancelled after payment", vec![capture(TOTAL), cancel()]),
    ]
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Accepted(&'static str),
    Invalid,
    Mismatch,
    Exceeds,
}

fn outcome(r: Result<OrderEvent, DomainError>) -> Outcome {
    match r {
        Ok(e) => Outcome::Accepted(e.event_type()),
        Err(DomainError::InvalidTransition { .. }) => Outcome::Invalid,
        Err(DomainError::CaptureAmountMismatch { .. }) => Outcome::Mismatch,
        Err(DomainError::RefundExceedsCaptured { .. }) => Outcome::Exceeds,
        Err(e) => panic!("unexpected {e}"),
    }
}

/// The whole transition table: every command against every state.
#[test]
fn every_command_against_every_state() {
    use Outcome::*;
    // (capture exact, capture wrong amount, ship, cancel, refund 1, refund everything captured)
    let expected: &[(&str, [Outcome; 6])] = &[
        (
            "placed",
            [
                Accepted("PaymentCaptured"),
                Mismatch,
                Invalid,
                Accepted("OrderCancelled"),
                Invalid,
                Invalid,
            ],
        ),
        (
            "paid",
            [
                Invalid,
                Invalid,
                Accepted("OrderShipped"),
                Accepted("OrderCancelled"),
                Accepted("OrderRefunded"),
                Accepted("OrderRefunded"),
            ],
        ),
        (
            "paid, partly refunded",
            [
                Invalid,
                Invalid,
                Accepted("OrderShipped"),
                Accepted("OrderCancelled"),
                Accepted("OrderRefunded"),
                Exceeds,
            ],
        ),
        (
            "paid, fully refunded",
            [
                Invalid,
                Invalid,
                Accepted("OrderShipped"),
                Accepted("OrderCancelled"),
                Exceeds,
                Exceeds,
            ],
        ),
        (
            "shipped",
            [
                Invalid,
                Invalid,
                Invalid,
                Invalid,
                Accepted("OrderRefunded"),
                Accepted("OrderRefunded"),
            ],
        ),
        (
            "shipped, partly refunded",
            [
                Invalid,
                Invalid,
                Invalid,
                Invalid,
                Accepted("OrderRefunded"),
                Exceeds,
            ],
        ),
        (
            "cancelled before payment",
            [Invalid, Invalid, Invalid, Invalid, Invalid, Invalid],
        ),
        (
            "cancelled after payment",
            [Invalid, Invalid, Invalid, Invalid, Invalid, Invalid],
        ),
    ];
    let states = states();
    assert_eq!(states.len(), expected.len(), "every state has a row");
    for ((name, history), (row_name, row)) in states.iter().zip(expected) {
        assert_eq!(name, row_name);
        let o = given(history);
        let cmds = [
            capture(TOTAL),
            capture(TOTAL - 1),
            ship(),
            cancel(),
            refund(1),
            refund(TOTAL),
        ];
        for (cmd, want) in cmds.iter().zip(row) {
            assert_eq!(
                &outcome(o.handle(cmd)),
                want,
                "state `{name}`, command {cmd:?}"
            );
        }
    }
}

#[test]
fn every_status_is_covered_by_the_table() {
    let seen: Vec<_> = states().iter().map(|(_, h)| given(h).status).collect();
    for s in OrderStatus::ALL {
        assert!(seen.contains(&s), "{s} missing from the transition table");
    }
}

#[test]
fn cancelling_a_paid_order_refunds_what_is_still_captured() {
    let o = given(&[capture(TOTAL), refund(1000)]);
    let e = o.handle(&cancel()).unwrap();
    let OrderEvent::OrderCancelled {
        refund: Some(r), ..
    } = &e
    else {
        panic!("expected a refund, got {e:?}");
    };
    assert_eq!(r.amount.minor(), TOTAL - 1000);
    let mut after = o.clone();
    after.apply(&e);
    assert_eq!(after.status, OrderStatus::Cancelled);
    assert_eq!(after.refunded, after.captured);
    assert_eq!(after.refundable(), Amount::ZERO);

    let unpaid = given(&[]).handle(&cancel()).unwrap();
    assert!(matches!(
        unpaid,
        OrderEvent::OrderCancelled { refund: None, .. }
    ));
    let fully_refunded = given(&[capture(TOTAL), refund(TOTAL)])
        .handle(&cancel())
        .unwrap();
    assert!(matches!(
        fully_refunded,
        OrderEvent::OrderCancelled { refund: None, .. }
    ));
}

#[test]
fn refunds_never_exceed_captured_in_any_sequence() {
    // Refund in uneven steps until refused; the sum must equal the capture.
    let mut o = given(&[capture(TOTAL)]);
    let mut refunded = 0;
    for step in [1000, 1000, 1000, 1000] {
        match o.handle(&refund(step)) {
            Ok(e) => {
                o.apply(&e);
                refunded += step;
            }
            Err(DomainError::RefundExceedsCaptured {
                available,
                requested,
            }) => {
                assert_eq!(available, TOTAL - refunded);
                assert_eq!(requested, step);
            }
            Err(e) => panic!("{e}"),
        }
        assert!(o.refunded <= o.captured);
    }
    assert_eq!(
        refunded, 2000,
        "the third and fourth 1000 exceed the remaining 999"
    );
    let rest = o.refundable().minor();
    let e = o.handle(&refund(rest)).unwrap();
    o.apply(&e);
    assert_eq!(o.refunded, o.captured);
}

#[test]
fn versions_increase_by_one_per_event() {
    let o = given(&[capture(TOTAL), ship(), refund(5), refund(5)]);
    assert_eq!(o.version.get(), 5);
}

#[test]
fn daily_measures_follow_the_counting_rules() {
    let cmd = place_cmd(vec![line("a", 2, 1250), line("b", 1, 499)]);
    let placed = DailyMeasures::of_event(&order::place(&cmd).unwrap());
    assert_eq!(
        (placed.orders_placed, placed.gross_minor, placed.items_sold),
        (1, TOTAL, 3)
    );
    assert_eq!(placed.captured_minor, 0);

    let o = given(&[capture(TOTAL)]);
    let c = DailyMeasures::of_event(&o.handle(&cancel()).unwrap());
    assert_eq!((c.orders_cancelled, c.refunded_minor), (1, TOTAL));
    assert_eq!(c.net_minor(), -i128::from(TOTAL));

    let shipped = DailyMeasures::of_event(&o.handle(&ship()).unwrap());
    assert!(shipped.is_zero());

    let sum = placed
        .checked_add(&DailyMeasures::of_event(
            &given(&[]).handle(&capture(TOTAL)).unwrap(),
        ))
        .and_then(|s| s.checked_add(&DailyMeasures::of_event(&o.handle(&refund(100)).unwrap())))
        .unwrap();
    assert_eq!(sum.net_minor(), i128::from(TOTAL - 100));

    let cancelled_out = sum.checked_add(&sum.negated()).unwrap();
    assert!(cancelled_out.is_zero());
    assert_eq!(sum.negated().negated(), sum);
}

#[test]
fn daily_measures_refuse_to_leave_64_bits() {
    let near = DailyMeasures {
        gross_minor: i64::MAX - 1,
        ..DailyMeasures::default()
    };
    let one = DailyMeasures {
        gross_minor: 1,
        ..DailyMeasures::default()
    };
    assert_eq!(
        near.checked_add(&one).map(|s| s.gross_minor),
        Some(i64::MAX)
    );
    assert_eq!(
        near.checked_add(&one).and_then(|s| s.checked_add(&one)),
        None
    );
    // Every measure is checked, not just money.
    for field in 0..6 {
        let mut m = [0i64; 6];
        m[field] = i64::MAX;
        let big = DailyMeasures {
            orders_placed: m[0],
            gross_minor: m[1],
            captured_minor: m[2],
            refunded_minor: m[3],
            orders_cancelled: m[4],
            items_sold: m[5],
        };
        assert_eq!(big.checked_add(&big), None, "measure {field}");
    }
    // Net never overflows, even between the extremes.
    let extremes = DailyMeasures {
        captured_minor: i64::MAX,
        refunded_minor: i64::MIN,
        ..DailyMeasures::default()
    };
    assert_eq!(
        extremes.net_minor(),
        i128::from(i64::MAX) - i128::from(i64::MIN)
    );
}

#[test]
fn envelopes_round_trip_through_the_outbox_encoding() {
    let o = given(&[capture(TOTAL)]);
    let e = o.handle(&refund(10)).unwrap();
    let mut after = o.clone();
    after.apply(&e);
    let env = EventEnvelope::record(
        EventId::from_uuid(uuid(99)),
        datetime!(2026-11-24 08:30 UTC),
        e,
        after,
    );
    let payload = serde_json::to_vec(&env.payload_json()).unwrap();
    let back = EventEnvelope::decode(
        env.event_id,
        env.aggregate_id,
        i64::from(env.aggregate_version.get()),
        env.event_type(),
        1,
        env.occurred_at,
        &payload,
    )
    .unwrap();
    assert_eq!(back, env);
    assert_eq!(back.aggregate_version.get(), 3);

    let wrong_type = EventEnvelope::decode(
        env.event_id,
        env.aggregate_id,
        3,
        "OrderPlaced",
        1,
        env.occurred_at,
        &payload,
    );
    assert!(matches!(
        wrong_type,
        Err(event::DecodeError::TypeMismatch { .. })
    ));
    let future = EventEnvelope::decode(
        env.event_id,
        env.aggregate_id,
        3,
        env.event_type(),
        2,
        env.occurred_at,
        &payload,
    );
    assert!(matches!(future, Err(event::DecodeError::SchemaVersion(2))));
    let garbage = EventEnvelope::decode(
        env.event_id,
        env.aggregate_id,
        3,
        env.event_type(),
        1,
        env.occurred_at,
        b"{}",
    );
    assert!(matches!(garbage, Err(event::DecodeError::Payload(_))));
}
