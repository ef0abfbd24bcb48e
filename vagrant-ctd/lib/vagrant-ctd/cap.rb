# frozen_string_literal: true

module VagrantPlugins
  module Ctd
    # Provider capabilities.
    module Cap
      def self.snapshot_list(machine)
        return [] if machine.id.nil?
        machine.provider.client.get("/1.0/instances/#{machine.id}/snapshots")["snapshots"]
      end
    end
  end
end
