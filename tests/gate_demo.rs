//! The gate/radar demo (`examples/gate_demo.rs`) runs for a few cycles: both devices answer every
//! status request, through a real broker.

#[allow(dead_code)]
#[path = "../examples/gate_demo.rs"]
mod gate_demo;

async fn run_demo(mqtt: &str) {
    let report = gate_demo::run(gate_demo::DemoOptions {
        port: 0,
        interval_ms: 100,
        fast: false,
        cycles: 4,
        mqtt: mqtt.to_string(),
    })
    .await
    .expect("the demo runs");
    assert_eq!(
        report,
        gate_demo::DemoReport {
            cycles: 4,
            answered: 8,
            timed_out: 0
        }
    );
}

#[actix_rt::test]
async fn gate_demo_runs_a_few_cycles_with_every_request_answered() {
    run_demo("3.1.1").await;
}

#[actix_rt::test]
async fn gate_demo_over_mqtt5_answers_by_response_topic_and_correlation_data() {
    run_demo("5").await;
}
