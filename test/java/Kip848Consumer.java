// A Java consumer on Kafka 4's consumer-group protocol (KIP-848, group.protocol=consumer), for the
// scaler's tests: joins GROUP on TOPIC, consumes and commits COMMIT records (0: commits nothing),
// prints "joined" once it has its partitions and "committed N" after its commit, then stays a
// member, polling, until its standard input closes.
//
//   java -cp "<kafka libs>/*" test/java/Kip848Consumer.java BROKERS TOPIC GROUP COMMIT
import java.time.Duration;
import java.util.Collection;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;

public class Kip848Consumer {
  public static void main(String[] args) throws Exception {
    Properties p = new Properties();
    p.put("bootstrap.servers", args[0]);
    p.put("group.id", args[2]);
    p.put("group.protocol", "consumer");
    p.put("enable.auto.commit", "false");
    p.put("auto.offset.reset", "earliest");
    p.put("max.poll.records", "1");
    p.put("key.deserializer", StringDeserializer.class.getName());
    p.put("value.deserializer", StringDeserializer.class.getName());
    int toCommit = Integer.parseInt(args[3]);
    Thread stdin = new Thread(() -> {
      try {
        while (System.in.read() != -1) { }
      } catch (Exception e) { }
    });
    stdin.setDaemon(true);
    stdin.start();
    try (KafkaConsumer<String, String> c = new KafkaConsumer<>(p)) {
      final boolean[] joined = {false};
      c.subscribe(List.of(args[1]), new ConsumerRebalanceListener() {
        public void onPartitionsRevoked(Collection<TopicPartition> parts) { }
        public void onPartitionsAssigned(Collection<TopicPartition> parts) {
          if (!joined[0] && !parts.isEmpty()) {
            joined[0] = true;
            System.out.println("joined");
            System.out.flush();
          }
          if (toCommit == 0) c.pause(parts);
        }
      });
      int done = 0;
      while (stdin.isAlive()) {
        for (ConsumerRecord<String, String> r : c.poll(Duration.ofMillis(200))) {
          if (done >= toCommit) continue;
          done++;
          c.commitSync(java.util.Map.of(new TopicPartition(r.topic(), r.partition()), new org.apache.kafka.clients.consumer.OffsetAndMetadata(r.offset() + 1)));
          if (done == toCommit) {
            System.out.println("committed " + done);
            System.out.flush();
            c.pause(c.assignment());
          }
        }
      }
    }
  }
}
